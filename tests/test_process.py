"""`fields process`: structure-from-motion on a capture rendered from the procedural scene (known poses), frame
selection from a video written here, and bad input (one line naming the file, exit 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import torch

from fields.process import ProcessError
from fields.process.pipeline import process
from fields.process.sfm import SfmOptions
from fields.process.video import select_frames, sharpness
from scenes import load_split
from scenes.camera_paths import look_at
from sfm_capture import one_thread, render  # scripts/, on the path through conftest
from similarity import umeyama

VIEWS, SIZE, FOV = 16, 256, 0.9


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """16 photos on a ring around the scene (elevation alternating 29 / 37 degrees, 22.5 degrees apart) and
    their true camera-to-world matrices (OpenGL)."""
    folder = tmp_path_factory.mktemp("capture") / "photos"
    folder.mkdir()
    poses = []
    with one_thread():
        for i in range(VIEWS):
            a, el = 2 * math.pi * i / VIEWS, 0.5 + 0.15 * (i % 2)
            eye = 2.6 * torch.tensor([math.cos(el) * math.cos(a), math.cos(el) * math.sin(a), math.sin(el)])
            poses.append(look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])))
            iio.imwrite(folder / f"view_{i:02d}.png", render(poses[-1], SIZE, SIZE, FOV))
    return folder, torch.stack(poses).numpy()


def test_sfm_recovers_the_rendered_cameras_and_the_output_loads(capture, tmp_path):
    folder, truth = capture
    out = tmp_path / "scene"
    (out / "images").mkdir(parents=True)  # an earlier output: replaced only with overwrite
    (out / "images" / "stale.png").write_bytes(b"old")
    with pytest.raises(ProcessError, match="--overwrite"):
        process(folder, out, from_video=False, sfm=SfmOptions(), show_progress=False)
    summary = process(folder, out, from_video=False, sfm=SfmOptions(), single_camera=True, overwrite=True,
                      show_progress=False)
    assert summary.registered == VIEWS and not summary.unregistered and summary.matcher == "exhaustive"
    assert summary.reprojection_error < 1.0 and summary.points > 100
    for name in ("images", "sparse/0/cameras.bin", "sparse/0/images.bin", "sparse/0/points3D.bin",
                 "transforms.json", "sparse_pc.ply"):
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in folder.iterdir())  # no stale
    meta = json.loads((out / "transforms.json").read_text())
    assert len(meta["frames"]) == VIEWS and meta["camera_model"] == "OPENCV"
    rotation = np.array(meta["applied_transform"])[:, :3]
    assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6)
    points = np.asarray(__import__("trimesh").load(out / "sparse_pc.ply").vertices)
    assert len(points) == summary.points

    # What `fields train --data` reads: the nerfstudio loader (every 8th frame held out for testing).
    splits = {s: load_split(out, s) for s in ("train", "test")}
    c2w = np.concatenate([splits[s].cameras.c2w.numpy() for s in splits]).astype(np.float64)
    names = [Path(f).name for s in splits for f in splits[s].file_paths]
    gt = truth[[int(n[5:7]) for n in names]]
    cams = splits["train"].cameras
    true_focal = 0.5 * SIZE / math.tan(0.5 * FOV)
    assert cams.size(0) == (SIZE, SIZE) and len(cams) + len(splits["test"].cameras) == VIEWS
    assert torch.allclose(cams.fx, torch.tensor(true_focal), rtol=0.02)  # fitted, not given
    assert torch.allclose(cams.cx, torch.tensor(SIZE / 2), atol=2.0)
    assert cams.distortion is None or float(cams.distortion.abs().max()) < 0.05  # a pinhole renderer

    # Camera centres up to a similarity. The ring is 4.6 units across; a camera misplaced by SfM (or a mirrored
    # or flipped reconstruction) is off by a sizeable part of that, while a sub-pixel fit at 256 px puts them
    # within millimetres (0.19% of the extent here, orientations within 0.3 degrees): the bars below leave
    # 2.5-3x room for other BLAS/CPU rounding and stay far below any real failure.
    scale, rot, shift = umeyama(c2w[:, :3, 3], gt[:, :3, 3])
    err = np.linalg.norm(scale * c2w[:, :3, 3] @ rot.T + shift - gt[:, :3, 3], axis=1)
    extent = np.ptp(gt[:, :3, 3], axis=0).max()
    assert err.max() < 0.005 * extent, (err.max(), extent)
    # Orientations in OpenGL axes: the same rotation maps every loaded camera onto its true one ...
    angles = [np.degrees(np.arccos(np.clip((np.trace(rot @ c[:3, :3] @ g[:3, :3].T) - 1) / 2, -1, 1)))
              for c, g in zip(c2w, gt)]
    assert max(angles) < 1.0, angles
    # ... and it keeps +Z up: the mean camera up of the capture, which transforms.json puts on +Z.
    assert np.degrees(np.arccos(np.clip(rot[2, 2], -1, 1))) < 2.0


def _video(path: Path, sharp: list[int], frames: int, size: int = 128) -> None:
    """A pattern panning slowly, every frame box-blurred except those in ``sharp``."""
    rng = np.random.default_rng(0)
    canvas = np.kron(rng.random((size // 2, size * 3 // 2)) > 0.5, np.ones((2, 2))).astype(np.float32)
    writer = imageio_ffmpeg.write_frames(str(path), (size, size), fps=10, quality=9, macro_block_size=16)
    writer.send(None)
    for i in range(frames):
        frame = canvas[:, i:i + size]
        if i not in sharp:  # 7x7 box blur
            pad = np.pad(frame, 3, mode="edge")
            frame = sum(pad[dy:dy + size, dx:dx + size] for dy in range(7) for dx in range(7)) / 49
        rgb = np.repeat((frame * 200 + 30)[..., None], 3, -1).astype(np.uint8)
        writer.send(np.ascontiguousarray(rgb))
    writer.close()


def test_video_keeps_the_sharpest_frame_of_each_window(tmp_path):
    frames, keep = 60, 6
    rng = np.random.default_rng(1)
    sharp = [w * 10 + int(rng.integers(0, 10)) for w in range(keep)]  # one sharp frame in each window of 10
    video = tmp_path / "clip.mp4"
    _video(video, sharp, frames)
    selection = select_frames(video, tmp_path / "frames", keep, max_size=3200)
    assert selection.read == frames
    assert selection.kept == sharp
    assert selection.names == [f"frame_{i:05d}.png" for i in sharp]
    written = [iio.imread(tmp_path / "frames" / n) for n in selection.names]
    assert all(im.shape == (128, 128, 3) for im in written)
    assert [round(sharpness(im)) for im in written] == [round(s) for s in selection.sharpness]
    # Asking for more frames than the clip has keeps every frame, once.
    assert select_frames(video, tmp_path / "all", 100, max_size=64).kept == list(range(frames))
    assert iio.imread(tmp_path / "all" / "frame_00000.png").shape == (64, 64, 3)  # downsized to --max-image-size


def _run_cli(capsys, *args: str) -> tuple[int, str]:
    import fields.cli as cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["process", *args])
    out = capsys.readouterr()
    return exit_info.value.code, (out.out + out.err).strip()


def test_bad_input_gives_one_line_naming_the_file_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    iio.imwrite(broken / "a.png", np.zeros((32, 32, 3), np.uint8))
    (broken / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    not_video = tmp_path / "clip.mp4"
    not_video.write_text("hello")
    noise = tmp_path / "noise"  # unrelated images: nothing to match
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        iio.imwrite(noise / f"n{i}.png", rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    cases = [
        (["images", str(empty), "--output", str(tmp_path / "o1")], [str(empty), "no images"]),
        (["images", str(broken), "--output", str(tmp_path / "o2")], [str(broken / "b.jpg"), "not a readable image"]),
        (["video", str(not_video), "--output", str(tmp_path / "o3")], [str(not_video), "decode"]),
        (["video", str(tmp_path / "missing.mp4"), "--output", str(tmp_path / "o4")], ["missing.mp4", "not found"]),
        (["images", str(noise), "--output", str(tmp_path / "o5"), "--quiet"],
         [str(noise), "registered only 0 of 6", "n0.png", "overlap"]),
        (["images", str(noise), "--output", str(existing)], [str(existing), "--overwrite"]),
        (["images", str(noise), "--output", str(existing), "--overwrite"], [str(existing), "not an earlier"]),
    ]
    for args, words in cases:
        code, text = _run_cli(capsys, *args)
        assert code == 2, (args, text)
        assert len(text.splitlines()) == 1 and text.startswith("error:"), (args, text)
        for w in words:
            assert w in text.replace("\n", ""), (args, w, text)
    assert (existing / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left behind
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))



def test_sequential_pairs_are_the_next_ten_frames_only(capture, tmp_path):
    """Video frames are matched with their 10 successors and no far "quadratic" pairs (i + 2^k), which matched
    repeating floor tiles and folded the trajectory of beer_video (see fields/process/sfm.py)."""
    from rich.progress import Progress

    from fields.process.sfm import SEQUENTIAL_OVERLAP, extract, image_pairs

    folder, _ = capture
    names = sorted(p.name for p in folder.iterdir())
    with Progress(disable=True) as progress:
        extract(tmp_path / "db.db", folder, names, SfmOptions(max_feature_size=64), True, progress)
    pairs = {tuple(sorted(p)) for p in image_pairs(tmp_path / "db.db", "sequential")}
    assert pairs == {(names[i], names[j]) for i in range(len(names))
                     for j in range(i + 1, min(i + 1 + SEQUENTIAL_OVERLAP, len(names)))}
    assert len(image_pairs(tmp_path / "db.db", "exhaustive")) == len(names) * (len(names) - 1) // 2


def test_photos_are_copied_downsized_or_turned_upright(tmp_path):
    """images/ holds byte copies, downsized copies above --max-image-size, and upright copies of photos whose
    EXIF orientation says they are turned (so SfM and the scene loader see the same pixels), under names
    without white space."""
    from PIL import Image

    from fields.process.images import copy_images, list_images, safe_names

    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)).save(src / "b.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(src / "c.jpg", exif=exif)
    (src / "notes.txt").write_text("not a photo")
    (src / "b.png").rename(src / "b 1.png")  # COLMAP's pair lists split at spaces
    Image.fromarray(rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)).save(src / "b_1.png")
    photos = list_images(src)
    assert [p.name for p in photos] == ["a.png", "b 1.png", "b_1.png", "c.jpg"]
    names = safe_names(photos)
    assert names == ["a.png", "b_1.png", "b_1-2.png", "c.jpg"]
    sizes = copy_images(photos, tmp_path / "images", names, max_size=100)
    assert sizes == [(60, 30), (100, 50), (60, 30), (20, 40)]
    assert (tmp_path / "images" / "a.png").read_bytes() == (src / "a.png").read_bytes()
    assert (tmp_path / "images" / "b_1-2.png").read_bytes() == (src / "b_1.png").read_bytes()
    assert iio.imread(tmp_path / "images" / "b_1.png").shape == (50, 100, 3)
    with Image.open(tmp_path / "images" / "c.jpg") as upright:
        assert upright.size == (20, 40) and upright.getexif().get(0x0112, 1) == 1
