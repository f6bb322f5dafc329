"""`fields process` on real captures: gerrard_hall (100 photos, exhaustive matching) and beer_video/Beer.mp4
(frames picked from the video, sequential matching); and on walk_around, a video rendered here from the procedural
scene along known cameras, whose recovered cameras are compared with the truth (the shipped model of the Beer video
folds; this one does not).

For each: images registered of given, mean reprojection error, 3-D points and seconds per stage. For the video,
the camera centres are compared with the COLMAP model shipped in beer_video/sparse/0 (71 frames, every 10th of
the clip): each shipped image is matched to the clip's frame it was extracted from by content (the decoded frame
with the smallest mean grey difference at 1/8 size), our centre at that frame's time is interpolated linearly
between the two nearest kept and registered frames (or taken as is when that very frame was kept), the two sets
are aligned by a similarity (Umeyama) and the error is given in % of the shipped cameras' extent (the largest
distance between two of them). With ``--train``, each processed folder is then trained with
`fields train --data DIR --max-time 300` and its held-out views evaluated (`fields eval --every 1`), and so are
the LLFF captures fern (``--downscale 8``: images_8, 504x378) and office_table (``--downscale auto``: images_2,
960x540) straight from their folders.

    python scripts/bench_process.py                      # SfM on all three (~10 minutes on 2 cores)
    python scripts/bench_process.py --no-write           # print only
    python scripts/bench_process.py --reuse --train      # train on the folders an earlier run wrote
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import torch
import tyro
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, write_section  # noqa: E402
from sfm_capture import walk_around, write_video  # noqa: E402
from similarity import aligned_errors, umeyama  # noqa: E402

from fields.process.pipeline import Summary, process  # noqa: E402
from fields.process.sfm import SfmOptions  # noqa: E402

SECTION = "process"
TARGET_MINUTES = 10.0  # gerrard_hall, all registered, on 2 cores
TARGET_CENTRE_ERROR = 1.0  # % of the camera extent, video
FOLD_DEGREES = 45.0
WALK_FRAMES, WALK_SIZE, WALK_FOV = 300, (480, 272), 1.0  # a 10-s clip at 30 fps
console = Console()


@dataclass
class Options:
    """Structure-from-motion on real captures (and optionally training on them); updates BENCHMARKS.md."""

    real: Path = ROOT.parent / "shared" / "scenes" / "real"
    """Folder holding gerrard_hall/ and beer_video/."""
    work_dir: Path = ROOT / "outputs" / "bench_process"
    """Processed scene folders and training runs go here."""
    captures: tuple[str, ...] = ("gerrard_hall", "beer_video", "walk_around")
    """Captures to reconstruct: folders under --real, and walk_around, a video of the procedural scene rendered
    here along known cameras (sfm_capture.walk_around), whose centres are compared with the truth."""
    num_frames: int = 150
    """--num-frames for the video."""
    reuse: bool = False
    """Use the processed folders an earlier run left in --work-dir instead of running SfM again."""
    train: bool = False
    """Also train each processed folder, and the --loaders captures, for --max-time s and evaluate their held-out
    views."""
    loaders: tuple[str, ...] = ("fern:8", "office_table:auto")
    """Captures under --real trained straight from their folders with --train, as NAME:DOWNSCALE."""
    max_time: float = 300.0
    no_write: bool = False
    """Print only; leave BENCHMARKS.md alone."""
    output: Path = ROOT / "BENCHMARKS.md"


def _small_grey(rgb: np.ndarray) -> np.ndarray:
    g = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    h, w = g.shape[0] // 8 * 8, g.shape[1] // 8 * 8
    return g[:h, :w].reshape(h // 8, 8, w // 8, 8).mean((1, 3))


def shipped_frame_times(video: Path, images: list[Path]) -> list[int]:
    """For each shipped image, the index of the clip's frame it shows (closest in content)."""
    reader = imageio_ffmpeg.read_frames(str(video))
    width, height = next(reader)["size"]
    clip = np.stack([_small_grey(np.frombuffer(raw, np.uint8).reshape(height, width, 3)) for raw in reader])
    ref = np.stack([_small_grey(iio.imread(p)) for p in images])
    return [int(np.abs(clip - r).mean((1, 2)).argmin()) for r in ref]


def cameras(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(centre, camera-to-world rotation in COLMAP's camera axes: x right, y down, z ahead, so its last column is
    the viewing direction) of each registered image of a COLMAP model, by image name."""
    import pycolmap

    model = pycolmap.Reconstruction(folder)
    return {model.image(i).name: (np.asarray(model.image(i).projection_center()),
                                  np.asarray(model.image(i).cam_from_world().rotation.matrix()).T)
            for i in model.reg_image_ids()}


def turns(directions: np.ndarray) -> np.ndarray:
    """Angles in degrees between consecutive viewing directions [N, 3]."""
    return np.degrees(np.arccos(np.clip((directions[1:] * directions[:-1]).sum(1), -1, 1)))


def video_centre_error(processed: Path, shipped: Path, video: Path) -> dict:
    """Our camera centres against the shipped COLMAP model's, after similarity alignment (see the docstring):
    over the whole model, and piece by piece where the shipped model turns the camera by more than
    FOLD_DEGREES between neighbouring frames (a third of a second apart: a fold of the reconstruction, not
    a movement of the phone), each piece aligned on its own and measured against its own extent."""
    ours = {int(name[6:11]): c for name, (c, _) in cameras(processed / "sparse" / "0").items()}  # frame_<i>.png
    theirs = cameras(shipped / "sparse" / "0")
    names = sorted(theirs)
    times = shipped_frame_times(video, [shipped / "images" / n for n in names])
    kept = np.array(sorted(ours))
    src, dst, dirs, exact = [], [], [], 0
    for name, t in zip(names, times):
        after = np.searchsorted(kept, t)
        if t in ours:
            exact += 1
            centre = ours[t]
        elif 0 < after < len(kept):
            t0, t1 = kept[after - 1], kept[after]
            centre = ((t1 - t) * ours[t0] + (t - t0) * ours[t1]) / (t1 - t0)
        else:
            continue
        src.append(centre), dst.append(theirs[name][0]), dirs.append(theirs[name][1][:, 2])
    src, dst, dirs = np.array(src), np.array(dst), np.array(dirs)
    diameter = lambda x: max(np.linalg.norm(x[:, None] - x[None], axis=-1).max(), 1e-12)  # noqa: E731
    folds = [i + 1 for i in np.flatnonzero(turns(dirs) > FOLD_DEGREES)]
    pieces = [(a, b) for a, b in zip([0, *folds], [*folds, len(src)]) if b - a >= 3]
    piece_err = np.concatenate([aligned_errors(src[a:b], dst[a:b]) / diameter(dst[a:b]) * 100 for a, b in pieces])
    whole = aligned_errors(src, dst) / diameter(dst) * 100
    ours_dirs = np.array([r[:, 2] for _, (_, r) in sorted(cameras(processed / "sparse" / "0").items())])
    return {"compared": len(src), "exact": exact, "shipped": len(names), "pieces": len(pieces),
            "piece_sizes": [int(b - a) for a, b in pieces], "mean_pct": float(piece_err.mean()),
            "max_pct": float(piece_err.max()), "whole_mean_pct": float(whole.mean()),
            "shipped_max_turn": float(turns(dirs).max()), "our_max_turn": float(turns(ours_dirs).max()),
            "times": f"{min(times)}..{max(times)} step {np.median(np.diff(times)):.0f}"}


def truth_error(processed: Path, truth: torch.Tensor) -> dict:
    """Every registered frame's centre against the camera that rendered it (``frame_<i>.png`` is clip frame i),
    after similarity alignment, in % of the true cameras' extent; and the largest orientation error."""
    ours = {int(name[6:11]): pose for name, pose in cameras(processed / "sparse" / "0").items()}
    index = sorted(ours)
    gt = truth[index].double().numpy()
    gt[:, :3, 1:3] *= -1  # OpenGL -> COLMAP camera axes (x right, y down, z ahead)
    src = np.array([ours[i][0] for i in index])
    scale, rotation, shift = umeyama(src, gt[:, :3, 3])
    err = np.linalg.norm(scale * src @ rotation.T + shift - gt[:, :3, 3], axis=1)
    extent = np.linalg.norm(gt[:, None, :3, 3] - gt[None, :, :3, 3], axis=-1).max()
    angles = [np.degrees(np.arccos(np.clip((np.trace(rotation @ ours[i][1] @ g[:3, :3].T) - 1) / 2, -1, 1)))
              for i, g in zip(index, gt)]
    return {"compared": len(index), "mean_pct": float(err.mean() / extent * 100),
            "max_pct": float(err.max() / extent * 100), "max_degrees": float(max(angles))}


def run_sfm(opt: Options, name: str) -> tuple[Path, Summary | None]:
    out = opt.work_dir / name
    if opt.reuse:
        if not (out / "transforms.json").is_file():
            raise SystemExit(f"{out}: no processed folder to reuse; run without --reuse first")
        return out, None
    if name == "walk_around":
        source, is_video = opt.work_dir / "walk_around.mp4", True
        if not source.is_file():
            console.print(f"rendering {WALK_FRAMES} frames of the procedural scene into {source}")
            source.parent.mkdir(parents=True, exist_ok=True)
            write_video(source, walk_around(WALK_FRAMES), *WALK_SIZE, WALK_FOV)
    else:
        is_video = name == "beer_video"
        source = opt.real / name / ("Beer.mp4" if is_video else "images")
    summary = process(source, out, from_video=is_video, sfm=SfmOptions(), num_frames=opt.num_frames,
                      overwrite=True, console=console)
    return out, summary


def train_and_eval(opt: Options, folder: Path, *extra: str) -> dict:
    """`fields train --data folder --max-time T` then `fields eval --every 1`; held-out PSNR/SSIM."""
    runs = opt.work_dir / "runs"
    cmd = [sys.executable, "-m", "fields.cli", "train", "--data", str(folder), "--max-time", str(opt.max_time),
           "--output-dir", str(runs), "--quiet", *extra]
    console.print(" ".join(cmd[2:]))
    subprocess.run(cmd, check=True, cwd=ROOT)
    run = max((runs / folder.name).glob("*/*"), key=lambda p: p.stat().st_mtime)
    subprocess.run([sys.executable, "-m", "fields.cli", "eval", str(run), "--every", "1", "--quiet"], check=True,
                   cwd=ROOT)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    return {"psnr": metrics["psnr"], "ssim": metrics["ssim"], "views": metrics["views"], "run": str(run)}


def main(opt: Options) -> None:
    rows = []
    for name in opt.captures:
        tic = time.perf_counter()
        folder, summary = run_sfm(opt, name)
        row = {"name": name, "folder": folder, "summary": summary, "wall": time.perf_counter() - tic}
        if name == "beer_video":
            row["centres"] = video_centre_error(folder, opt.real / name, opt.real / name / "Beer.mp4")
            console.print(f"video camera centres: {row['centres']}", soft_wrap=True)
        if name == "walk_around":
            row["truth"] = truth_error(folder, walk_around(WALK_FRAMES))
            console.print(f"walk_around against the true cameras: {row['truth']}", soft_wrap=True)
        if opt.train:
            row["train"] = train_and_eval(opt, folder)
            console.print(f"{name}: held-out {row['train']}")
        rows.append(row)
    loaded = []
    for spec in opt.loaders if opt.train else ():
        name, downscale = spec.split(":")
        loaded.append({"name": name, "downscale": downscale,
                       "train": train_and_eval(opt, opt.real / name, "--downscale", downscale)})
        console.print(f"{name}: held-out {loaded[-1]['train']}")
    body = table(rows, opt) + loader_table(loaded, opt)
    console.print(body, soft_wrap=True, highlight=False)
    if not opt.no_write:
        write_section(SECTION, body, opt.output)


def table(rows: list[dict], opt: Options) -> str:
    lines = ["## fields process (structure-from-motion, pycolmap)", "",
             f"Targets: gerrard_hall 100/100 registered in <= {TARGET_MINUTES:.0f} minutes on 2 cores; video camera "
             f"centres within {TARGET_CENTRE_ERROR:.0f}% of the camera extent of the shipped COLMAP model. walk_around: "
             f"a {WALK_FRAMES}-frame {WALK_SIZE[0]}x{WALK_SIZE[1]} mp4 of the procedural scene rendered along known "
             "cameras (a hand-held walk once around it), processed as a user's video.", "",
             "| capture | registered | matcher | reproj. error px | 3-D points | seconds per stage | total s |"
             " centre error (% extent) | held-out PSNR / SSIM |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        s: Summary | None = r["summary"]
        sfm = ("(reused)", "", "", "", "", "") if s is None else (
            f"{s.registered}/{s.given}" + (f" ({s.frames_read} frames read)" if s.frames_read else ""), s.matcher,
            f"{s.reprojection_error:.2f}", f"{s.points}", ", ".join(f"{k} {v:.0f}" for k, v in s.seconds.items()),
            f"{sum(s.seconds.values()):.0f}")
        c, truth = r.get("centres"), r.get("truth")
        centre = f"against the true cameras: mean {truth['mean_pct']:.2f}, max {truth['max_pct']:.2f} over " \
            f"{truth['compared']} frames; orientations within {truth['max_degrees']:.2f} deg" if truth else ""
        centre = centre if c is None else (
            f"mean {c['mean_pct']:.2f}, max {c['max_pct']:.2f} over {c['compared']} frames in {c['pieces']} pieces "
            f"{c['piece_sizes']} (whole model: mean {c['whole_mean_pct']:.1f}; turns between neighbouring frames: "
            f"shipped up to {c['shipped_max_turn']:.0f} deg, ours up to {c['our_max_turn']:.0f} deg)")
        t = r.get("train")
        trained = "" if t is None else f"{t['psnr']:.2f} dB / {t['ssim']:.3f} ({t['views']} views, {opt.max_time:.0f} s)"
        lines.append(f"| {r['name']} | " + " | ".join(sfm) + f" | {centre} | {trained} |")
    return "\n".join(lines)


def loader_table(rows: list[dict], opt: Options) -> str:
    if not rows:
        return ""
    lines = ["", "", f"Captures trained straight from their folders (hash grid, {opt.max_time:.0f} s, every held-out "
             "view: every 8th image):", "", "| capture | --downscale | held-out PSNR / SSIM | views |",
             "| --- | --- | --- | --- |"]
    for r in rows:
        t = r["train"]
        lines.append(f"| {r['name']} | {r['downscale']} | {t['psnr']:.2f} dB / {t['ssim']:.3f} | {t['views']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(tyro.cli(Options))
