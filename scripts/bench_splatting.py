"""Gaussian splatting speed: render frames/s at 200x200 and forward+backward ms, native vs reference, same run.

The Gaussians are random but lego-like: N points on the surfaces of the embedded procedural scene (a lego-sized
object in [-1, 1]^3) plus 10% floaters in its box, isotropic-ish scales sized so that N of them roughly cover the
surface (a trained set of N Gaussians looks like this), opacities skewed to opaque, random colours. They are seen
by test camera 0 of lego 200x200. Prints a table and a per-stage profile of the native path, and rewrites the
``splatting`` section of BENCHMARKS.md.

    FIELDS_DATA=/path/to/nerf_synthetic python scripts/bench_splatting.py [--sizes 10000 100000 300000]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import path_mode, timed, write_section  # noqa: E402
from renderers import native  # noqa: E402
from renderers import splatting as sp  # noqa: E402
from scenes import find_scene, load_split, procedural  # noqa: E402


def lego_like_gaussians(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n_float = n // 10
    means = torch.cat([procedural.surface_points(n - n_float, seed=seed), torch.rand(n_float, 3, generator=g) * 2 - 1])
    area = 8.0  # surface area of the procedural scene, roughly
    typical = math.sqrt(area / n)
    scales = typical * torch.exp(torch.randn(n, 3, generator=g) * 0.4)
    return {"means": means, "quats": torch.randn(n, 4, generator=g), "scales": scales,
            "opacities": torch.sigmoid(torch.randn(n, generator=g) * 2 + 1.5), "colors": torch.rand(n, 3, generator=g)}


def measure(gs: dict, cams, repeats: int, warmup: bool = True) -> tuple[float, float, float]:
    """(render seconds without grad, forward+backward seconds, render CPU seconds of this process)."""
    bg = torch.ones(3)

    def render():
        with torch.no_grad():
            sp.render_gaussians(gs["means"], gs["quats"], gs["scales"], gs["opacities"], gs["colors"], cams, 0, bg)

    leaves = {k: v.clone().requires_grad_() for k, v in gs.items()}

    def train_step():
        out = sp.render_gaussians(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"],
                                  leaves["colors"], cams, 0, bg)
        (out["rgb"].square().mean() + out["depth"].mean()).backward()

    cpu = time.process_time()
    t_render = timed(render, repeats, warmup)
    cpu = (time.process_time() - cpu) / (repeats + warmup)  # robust to a busy machine (no waiting counted)
    return t_render, timed(train_step, repeats, warmup), cpu


def stage_profile(gs: dict, cams, repeats: int) -> dict[str, float]:
    """Milliseconds per native stage (project, bin, rasterize forward/backward, project backward)."""
    ops = native.native_ops()
    cam = sp.Camera.of(cams, 0, torch.float32, torch.device("cpu"))
    viewmat = torch.cat([cam.R, cam.t[:, None]], 1)
    intr = (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height, 0.01)
    w, h = cams.size(0)
    m2, con, dep, radii, comp = ops.splat_project_fwd(gs["means"], gs["quats"], gs["scales"], viewmat, *intr)
    ids, offs = ops.splat_bin(m2, con, gs["opacities"], radii, dep, w, h, 16)
    feats = torch.cat([gs["colors"], dep[:, None]], 1)
    img, alpha, final_t, last = ops.splat_rasterize_fwd(m2, con, feats, gs["opacities"], ids, offs, w, h, 16)
    v_img, v_alpha = torch.randn_like(img), torch.randn_like(alpha)
    v_m2, v_con, v_dep, v_comp = (torch.randn_like(t) for t in (m2, con, dep, comp))
    stages = {
        "project": lambda: ops.splat_project_fwd(gs["means"], gs["quats"], gs["scales"], viewmat, *intr),
        "bin + sort": lambda: ops.splat_bin(m2, con, gs["opacities"], radii, dep, w, h, 16),
        "rasterize fwd": lambda: ops.splat_rasterize_fwd(m2, con, feats, gs["opacities"], ids, offs, w, h, 16),
        "rasterize bwd": lambda: ops.splat_rasterize_bwd(v_img, v_alpha, m2, con, feats, gs["opacities"], ids, offs,
                                                         final_t, last, w, h, 16),
        "project bwd": lambda: ops.splat_project_bwd(v_m2, v_con, v_dep, v_comp, gs["means"], gs["quats"],
                                                     gs["scales"], viewmat, *intr),
    }
    prof = {k: 1e3 * timed(f, repeats) for k, f in stages.items()}
    prof["pairs"] = ids.numel()
    prof["visible"] = int((radii > 0).sum())
    return prof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reference-max", type=int, default=10_000,
                    help="skip the (slow) reference above this many Gaussians")
    ap.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's choice)")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    if native.native_ops() is None:
        raise SystemExit("the native build is unavailable; nothing to compare")
    cams = load_split(find_scene("lego"), "test").cameras[0:1]
    console.print(f"lego test camera 0 at {'x'.join(map(str, cams.size(0)))}, {torch.get_num_threads()} threads")
    rows, profiles = [], []
    for n in args.sizes:
        gs = lego_like_gaussians(n)
        with path_mode(True):
            nat = measure(gs, cams, args.repeats)
        prof = stage_profile(gs, cams, args.repeats)
        ref = (float("nan"), float("nan"), float("nan"))
        if n <= args.reference_max:
            with path_mode(False):
                ref = measure(gs, cams, 1, warmup=False)  # seconds per call: one is enough
        rows.append((n, prof["visible"], prof["pairs"], nat, ref))
        profiles.append((n, prof))
        console.print(f"N={n}: native {1 / nat[0]:.1f} fps, fwd+bwd {1e3 * nat[1]:.1f} ms; "
                      f"reference {1 / ref[0]:.2f} fps, fwd+bwd {1e3 * ref[1]:.0f} ms")

    def fmt(v: float, f: str) -> str:
        return "-" if math.isnan(v) else format(v, f)

    header = ("| Gaussians | visible | tile pairs | native fps | >= 20 fps | native render CPU ms | reference fps "
              "| speed-up | native fwd+bwd ms | reference fwd+bwd ms |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [f"| {n:,} | {vis:,} | {pairs:,} | {1 / nat[0]:.1f} | {'yes' if 1 / nat[0] >= 20 else 'no'} | "
             f"{1e3 * nat[2]:.1f} | "
             f"{fmt(1 / ref[0], '.2f')} | {fmt(ref[0] / nat[0], '.0f')}x | {1e3 * nat[1]:.1f} | "
             f"{fmt(1e3 * ref[1], '.0f')} |" for n, vis, pairs, nat, ref in rows]
    stage_names = [k for k in profiles[0][1] if k not in ("pairs", "visible")]
    prof_lines = ["| Gaussians | " + " | ".join(stage_names) + " |", "|---" * (len(stage_names) + 1) + "|"]
    prof_lines += [f"| {n:,} | " + " | ".join(f"{p[k]:.1f}" for k in stage_names) + " |" for n, p in profiles]
    load = os.getloadavg()[0]
    body = (
        "Render of lego-like random Gaussians (N on the procedural scene's surfaces + 10% floaters, scales "
        "~sqrt(8/N), opacities skewed opaque) from lego test camera 0 at 200x200 with depth; fps without grad, "
        "fwd+bwd = render + loss + backward to every parameter; render CPU ms = CPU time of the process per "
        "render (all threads), which a busy machine inflates less than wall time. Target: render >= 20 fps at "
        "200x200 on 2 cores.\n\n"
        + "\n".join([header, *lines])
        + "\n\nNative stages (ms, colour + depth channels):\n\n" + "\n".join(prof_lines)
        + f"\n\nLoad average when the run ended: {load:.1f} (on a shared machine the figures are noisy)."
    )
    console.print(body)
    if not args.no_write:
        write_section("splatting", body)


if __name__ == "__main__":
    main()
