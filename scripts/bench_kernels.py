"""Native kernels vs the plain-PyTorch reference on lego 200x200 with the default config, in the same run.

Trains a few steps natively so the occupancy grid is pruned as in a real run, captures one training batch, then
times each op on it (native and reference) and whole training steps (marching + field + compositing + backward
+ optimizer, occupancy-grid updates included) from the same state with each path. Prints a table and a profile
of the native step, and rewrites the ``kernels`` section of BENCHMARKS.md.

    FIELDS_DATA=/path/to/nerf_synthetic python scripts/bench_kernels.py
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import BENCHMARKS, path_mode, timed, write_section  # noqa: E402
from fields.run.config import RunConfig, SceneConfig  # noqa: E402
from fields.backends.encodings import hash_encode, sh_encode  # noqa: E402
from fields.training.trainer import Trainer  # noqa: E402
from renderers import native  # noqa: E402
from renderers.compositing import composite, transmittance  # noqa: E402
from renderers.marching import march_rays  # noqa: E402
from renderers.render import sample_rays, shaded_samples  # noqa: E402


def capture_batch(tr: Trainer):
    """The rays, samples and field inputs of one training step from the trainer's current state."""
    gen = torch.Generator().manual_seed(12345)
    idx = torch.randint(0, len(tr.steps.rays), (tr.steps.n_rays,), generator=gen)
    origins, dirs = (t.contiguous() for t in tr.steps.rays.rays(idx))
    jitter = torch.rand(tr.steps.n_rays, generator=gen)
    marched = march_rays(origins, dirs, tr.grid.binary, tr.grid.aabb, tr.model.step_size, jitter=jitter)
    samples = sample_rays(origins, dirs, tr.grid, tr.cfg.render, tr.field.density, jitter)
    x, d = samples.positions(origins, dirs)
    return dict(origins=origins, dirs=dirs, jitter=jitter, marched=marched, samples=samples, x=x, d=d)


def mlp_pass(field, b: dict):
    """Forward+backward of the density and colour MLPs alone, on the batch's kept samples."""
    u = field.normalize(b["x"])[0].contiguous()
    with torch.no_grad():
        h = field.encoding(u)
    sh = sh_encode(b["d"])

    def run():
        field.zero_grad(set_to_none=True)
        geo = field.density_net(h)
        rgb = field.color_net(sh, geo[:, 1:])
        (geo[:, 0].sum() + rgb.sum()).backward()
    return run


def op_timings(tr: Trainer, b: dict, repeats: int) -> list[tuple[str, int, float, float]]:
    """(op, samples per call, native seconds, reference seconds) for each op on the captured batch."""
    field, enc, grid, s = tr.field, tr.field.encoding, tr.grid, b["samples"]
    u = field.normalize(b["x"])[0].contiguous()
    n_marched, n = len(b["marched"]), len(s)
    sigmas = torch.rand(n) * 50
    rgbs = torch.rand(n, 3)

    def march():
        march_rays(b["origins"], b["dirs"], grid.binary, grid.aabb, tr.model.step_size, jitter=b["jitter"])

    def encode_fwd():
        with torch.no_grad():
            hash_encode(u, enc.table, enc.resolutions)

    def encode_fwd_bwd():
        enc.table.grad = None
        hash_encode(u, enc.table, enc.resolutions).sum().backward()

    def comp():
        sg = sigmas.clone().requires_grad_()
        out = composite(sg, rgbs, s.t_starts, s.t_ends, s.ray_indices, s.n_rays)
        (out["rgb"].sum() + out["opacity"].sum()).backward()

    def trans():
        transmittance(sigmas * (s.t_ends - s.t_starts), s.ray_indices, s.n_rays)

    def grid_update():
        g = copy.deepcopy(grid)
        g.update(field.density, tr.model.step_size, warmup=False, generator=torch.Generator().manual_seed(0))

    rows = []
    for name, fn, count, reps in [("march_rays", march, n_marched, repeats),
                                  ("hash_encode forward", encode_fwd, n, repeats),
                                  ("hash_encode forward+backward", encode_fwd_bwd, n, repeats),
                                  ("MLPs forward+backward (density + colour)", mlp_pass(field, b), n, repeats),
                                  ("composite forward+backward", comp, n, repeats),
                                  ("transmittance", trans, n, repeats),
                                  ("occupancy-grid update (64^3)", grid_update, grid.occs.numel() // 2, 1)]:
        with path_mode(True):
            t_native = timed(fn, reps)
        with path_mode(False):
            t_ref = timed(fn, max(1, reps // 2))
        rows.append((name, count, t_native, t_ref))
    field.zero_grad(set_to_none=True)
    return rows


def step_timings(tr: Trainer, blocks: dict[bool, int]) -> dict[bool, tuple[float, int, int]]:
    """(seconds, samples, steps) of the fastest block of ``grid_every`` consecutive training steps (so exactly
    one occupancy-grid update each), every block from the same state, per path. The minimum over blocks
    filters out other processes on a shared machine."""
    state = copy.deepcopy(tr.state_dict())
    n_steps = tr.cfg.train.grid_every
    out = {}
    for use_native, n_blocks in blocks.items():
        with path_mode(use_native):
            tr.load_state_dict(copy.deepcopy(state))
            tr.train_step()  # untimed: first-call allocations
            for _ in range(n_blocks):
                tr.load_state_dict(copy.deepcopy(state))
                samples, tic = 0, time.perf_counter()
                for _ in range(n_steps):
                    samples += tr.train_step()["samples"]
                elapsed = time.perf_counter() - tic
                if use_native not in out or elapsed < out[use_native][0]:
                    out[use_native] = (elapsed, samples, n_steps)
    tr.load_state_dict(state)
    return out


def native_profile(tr: Trainer, b: dict, repeats: int) -> list[tuple[str, float]]:
    """Seconds per stage of one native training step on the captured batch (grid update amortised)."""
    field, cfg, s = tr.field, tr.cfg, b["samples"]
    target = torch.rand(s.n_rays, 3)
    bg = torch.rand(s.n_rays, 3)
    stages = {}

    def forward():
        kept, sigmas, rgbs, _ = shaded_samples(field.geometry, field.color, tr.grid, b["origins"], b["dirs"],
                                            cfg.render, b["jitter"])
        out = composite(sigmas, rgbs, kept.t_starts, kept.t_ends, kept.ray_indices, kept.n_rays)
        rgb = out["rgb"] + (1.0 - out["opacity"][:, None]) * bg
        return torch.nn.functional.mse_loss(rgb, target)

    def backward():
        tr.optimizer.zero_grad(set_to_none=True)
        forward().backward()

    with path_mode(True):
        grid = copy.deepcopy(tr.grid)
        stages["occupancy-grid update / grid_every"] = timed(
            lambda: grid.update(field.density, tr.model.step_size, warmup=False), 1) / cfg.train.grid_every
        stages["march_rays"] = timed(lambda: march_rays(b["origins"], b["dirs"], tr.grid.binary, tr.grid.aabb,
                                                        tr.model.step_size, jitter=b["jitter"]), repeats)
        with torch.no_grad():
            stages["forward: march, geometry of marched samples, pruning, colour of kept ones, composite, loss"] = \
                timed(forward, repeats)
        fwd_grad = timed(forward, repeats)
        stages["backward (incl. forward with autograd) - forward"] = timed(backward, repeats) - fwd_grad
        mlps = mlp_pass(field, b)
        stages["  of which MLPs forward+backward on kept samples (fused)"] = timed(mlps, repeats)
        backward()  # leaves gradients for the optimizer to apply
        stages["optimizer step (fused Adam)"] = timed(tr.optimizer.step, repeats)
    tr.optimizer.zero_grad(set_to_none=True)
    return list(stages.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", default="lego")
    ap.add_argument("--data-root", type=Path, default=None, help="folder holding the scene (default: $FIELDS_DATA)")
    ap.add_argument("--warmup-steps", type=int, default=120, help="native training steps before measuring")
    ap.add_argument("--native-blocks", type=int, default=3, help="blocks of grid_every steps timed natively")
    ap.add_argument("--reference-blocks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output", type=Path, default=BENCHMARKS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    console = Console()
    kernels = native.native_ops()
    if kernels is None:
        raise SystemExit("native kernels unavailable (see the warning above); nothing to compare")

    cfg = RunConfig(scene=SceneConfig(scene=args.scene, data_root=args.data_root))
    tic = time.perf_counter()
    tr = Trainer(cfg, None, Console(quiet=True))  # no run folder: nothing is written
    with path_mode(True):
        for _ in range(args.warmup_steps):
            tr.train_step()
    console.print(f"warm-up: {args.warmup_steps} native steps, occupied {tr.grid.occupied_fraction():.1%}, "
                  f"{tr.steps.n_rays} rays/batch")
    with path_mode(True):
        batch = capture_batch(tr)
    ops = op_timings(tr, batch, args.repeats)
    steps = step_timings(tr, {True: args.native_blocks, False: args.reference_blocks})
    profile = native_profile(tr, batch, args.repeats)
    total = time.perf_counter() - tic

    lines = ["| op | samples/call | native ms | reference ms | native M samples/s | speed-up |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, count, tn, tref in ops:
        lines.append(f"| {name} | {count} | {tn * 1e3:.2f} | {tref * 1e3:.2f} | {count / tn / 1e6:.2f} | "
                     f"{tref / tn:.1f}x |")
    (tn, sn, kn), (tref, sref, kref) = steps[True], steps[False]
    sps_n, sps_r = sn / tn, sref / tref
    lines.append(f"| **training step** (mean over the fastest of {args.native_blocks} native / "
                 f"{args.reference_blocks} reference blocks of {kn} steps) | {sn // kn} | "
                 f"{tn / kn * 1e3:.1f} | {tref / kref * 1e3:.1f} | **{sps_n / 1e6:.2f}** | **{sps_r and sps_n / sps_r:.1f}x** |")
    step_ms = tn / kn * 1e3
    prof = ["| stage of a native step | ms | share |", "| --- | ---: | ---: |"]
    for name, t in profile:
        prof.append(f"| {name} | {t * 1e3:.1f} | {t * 1e3 / step_ms:.0%} |")
    n_marched, n_kept = len(batch["marched"]), len(batch["samples"])
    bf16 = tr.field.density_net.bf16 and kernels.mlp_bf16()
    mlp_precision = ("float32" if not bf16 else "bfloat16 on AMX tiles (float32 accumulation)"
                     if kernels.mlp_amx() else "bfloat16 AVX512-BF16 dot products (float32 accumulation)")
    body = "\n".join([
        "## Native kernels (`scripts/bench_kernels.py`)",
        "",
        f"Lego 200x200, default config, after "
        f"{args.warmup_steps} native warm-up steps (grid {tr.grid.occupied_fraction():.1%} occupied, "
        f"{batch['origins'].shape[0]} rays, {n_marched} marched -> {n_kept} kept samples per batch). "
        f"Took {total:.0f} s. Samples/s count the samples the field is trained on. Native MLPs: {mlp_precision}; "
        "the reference runs float32 torch layers.",
        "",
        *lines,
        "",
        "Where a native step's time goes (same batch; medians of stages timed separately, so shares "
        "need not sum to 100%; the rest is Python, batch drawing and loss bookkeeping):",
        "",
        *prof,
    ])
    console.print(body)
    if not args.no_write:
        write_section("kernels", body, args.output)
        console.print(f"updated {args.output}")


if __name__ == "__main__":
    main()
