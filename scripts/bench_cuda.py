"""The CUDA build of the native kernels against the CPU build of the same ops, on the same inputs, in one run.

Needs a GPU, torch with CUDA and nvcc (the extension is then built for both devices). For each op it times the
CUDA kernel (wall time between synchronisations, after a warm-up call) and the CPU build on this machine's cores,
and checks that the two agree on these large inputs: identical marching samples and binning, values and gradients
within float32 rounding (the tests compare each build with the plain-PyTorch reference on small inputs; this
adds scale). Inputs are sized like real work: a million hash-grid samples of the default lego table, a quarter of a
million rays through a 128^3 grid holding a shell, 300k Gaussians on an 800x800 image. Rewrites the ``cuda``
section of BENCHMARKS.md.

    python scripts/bench_cuda.py              # on a machine with a GPU
    python scripts/bench_cuda.py --device cpu --scale 0.05 --no-write   # dry run of the script without a GPU
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import BENCHMARKS, timed, write_section  # noqa: E402
from fields.backends.encodings import hash_encode, level_resolutions  # noqa: E402
from scenes.camera_paths import look_at  # noqa: E402
from fields.backends.hashgrid import HashGridConfig  # noqa: E402
from renderers import native  # noqa: E402
from renderers import splatting as sp  # noqa: E402
from renderers.compositing import composite  # noqa: E402
from renderers.marching import march_rays  # noqa: E402
from scenes.cameras import Cameras  # noqa: E402


def max_rel_diff(a, b) -> float:
    """Largest absolute difference over matching tensors relative to the largest magnitude of that tensor in
    ``b`` (gradients summed over many pixels or samples are large; atomic adds sum them in another order)."""
    a, b = (a,) if torch.is_tensor(a) else a, (b,) if torch.is_tensor(b) else b
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if y.numel():
            x, y = x.detach().cpu().double(), y.detach().cpu().double()
            worst = max(worst, (x - y).abs().max().item() / max(y.abs().max().item(), 1e-30))
    return worst


def hash_case(n: int, g: torch.Generator):
    cfg = HashGridConfig()
    res = torch.tensor(level_resolutions(cfg.n_levels, cfg.base_resolution, cfg.max_resolution))
    x = torch.rand(n, 3, generator=g)
    table = torch.randn(cfg.n_levels, 2 ** cfg.log2_table_size, cfg.n_features, generator=g) * 1e-2
    grad = torch.randn(n, cfg.n_levels * cfg.n_features, generator=g)
    label = f"{cfg.n_levels} levels x 2^{cfg.log2_table_size} x {cfg.n_features}, finest {cfg.max_resolution}"

    def make(dev):
        xd, rd, gd = x.to(dev), res.to(dev), grad.to(dev)
        td = table.to(dev).detach().clone().requires_grad_()  # a leaf of its own on every device

        def fwd():
            with torch.no_grad():
                return hash_encode(xd, td, rd)

        def fwd_bwd():
            td.grad = None
            hash_encode(xd, td, rd).backward(gd)
            return td.grad
        return fwd, fwd_bwd
    return label, make


def shell_grid(res: int) -> torch.Tensor:
    """Occupied cells on a sphere shell of radius 0.6 (of a [-1, 1] box) plus a small solid core: an object's
    surface with empty space outside and inside, as a trained grid looks."""
    c = (torch.arange(res) + 0.5) / res * 2 - 1
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    return ((r - 0.6).abs() < 0.05) | (r < 0.15)


def orbit_rays(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays from cameras on a sphere of radius 3 towards points near the centre (most of them hit the box)."""
    eye = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3
    target = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.9
    return eye, torch.nn.functional.normalize(target - eye, dim=-1), torch.rand(n, generator=g)


def splat_scene(n: int, g: torch.Generator):
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * torch.rand(n, 1, generator=g)
    scales = torch.exp(torch.rand(n, 3, generator=g) * 2 - 5.5)
    quats = torch.randn(n, 4, generator=g)
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g)
    return means, quats, scales, opac, colors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="device measured against the CPU build (cpu: a dry run)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every problem size")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--output", type=Path, default=BENCHMARKS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    console = Console()
    dev = args.device
    ops = native.native_ops()
    if ops is None:
        raise SystemExit("native kernels unavailable (see the warning above)")
    if dev == "cuda" and not (torch.cuda.is_available() and ops.has_cuda()):
        raise SystemExit("no CUDA build: needs a GPU, torch with CUDA and nvcc")
    g = torch.Generator().manual_seed(0)
    rows: list[tuple[str, str, int, float, float, float]] = []
    tic = time.perf_counter()

    def measure(name: str, what: str, count: int, make: Callable, cpu_repeats: int = 3) -> float:
        """Times ``make(device)()`` on the device and on the CPU; returns their largest relative difference."""
        fn_dev, fn_cpu = make(dev), make("cpu")
        diff = max_rel_diff(fn_dev(), fn_cpu())
        rows.append((name, what, count, timed(fn_dev, args.repeats, device=dev), timed(fn_cpu, cpu_repeats), diff))
        console.print(f"{name}: {rows[-1][3] * 1e3:.3f} ms on {dev}, {rows[-1][4] * 1e3:.2f} ms on the CPU, "
                      f"max relative diff {diff:.1e}")
        return diff

    # Hash encoding.
    n = int((1 << 20) * args.scale)
    label, make_hash = hash_case(n, g)
    measure("hash_encode forward", label, n, lambda d: make_hash(d)[0])
    measure("hash_encode forward+backward (table gradient)", label, n, lambda d: make_hash(d)[1])

    # Marching and compositing.
    n_rays = int((1 << 18) * args.scale)
    binary = shell_grid(128)
    aabb = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])
    step = math.sqrt(3) * 2 / 1024
    origins, dirs, jitter = orbit_rays(n_rays, g)
    march_label = f"{n_rays} rays, 128^3 grid ({binary.float().mean().item():.1%} occupied), 1024 steps/diagonal"

    def make_march(d):
        o, di, j, b = origins.to(d), dirs.to(d), jitter.to(d), binary.to(d)

        def run():
            s = march_rays(o, di, b, aabb, step, jitter=j)
            return s.ray_indices, s.t_starts, s.t_ends
        return run

    samples = march_rays(origins, dirs, binary, aabb, step, jitter=jitter)
    n_samples = len(samples)
    if measure("march_rays", march_label, n_rays, make_march) != 0.0:
        raise SystemExit(f"march_rays on {dev} does not emit the CPU build's samples")
    sigmas = torch.rand(n_samples, generator=g) * 30
    rgbs = torch.rand(n_samples, 3, generator=g)
    coef = torch.randn(n_rays, 3, generator=g)

    def make_composite(d):
        s0, c0, ts, te, ray, cf = (t.to(d) for t in (sigmas, rgbs, samples.t_starts, samples.t_ends,
                                                     samples.ray_indices, coef))

        def run():
            s, c = s0.clone().requires_grad_(), c0.clone().requires_grad_()
            out = composite(s, c, ts, te, ray, n_rays)
            (out["rgb"] * cf).sum().backward()
            return out["rgb"], out["depth"], s.grad, c.grad
        return run
    measure("composite forward+backward", f"{n_samples} samples on {n_rays} rays", n_samples, make_composite)

    # Gaussian splatting: projection, binning, rasterization, forward and backward.
    n_gauss, size = int(300_000 * args.scale), max(64, int(800 * math.sqrt(args.scale)))
    scene = splat_scene(n_gauss, g)
    c2w = look_at(torch.tensor([2.2, 1.4, 1.2]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    cams = Cameras.from_fov(c2w[None], size, size, 0.7)
    bg = torch.tensor([0.2, 0.3, 0.4])
    img_coef = torch.randn(size, size, 3, generator=g)

    def make_splat(d):
        leaves0 = [t.to(d) for t in scene]
        cf = img_coef.to(d)

        def run():
            leaves = [t.clone().requires_grad_() for t in leaves0]
            out = sp.render_gaussians(*leaves, cams, 0, bg.to(d))
            (out["rgb"] * cf).sum().backward()
            return (out["rgb"], out["depth"], *(t.grad for t in leaves))
        return run
    measure("Gaussian splatting render forward+backward", f"{n_gauss} Gaussians, {size}x{size} image", size * size,
            make_splat, cpu_repeats=1)
    total = time.perf_counter() - tic

    device_name = torch.cuda.get_device_name() if dev == "cuda" else "the CPU (dry run)"
    lines = [f"| op | problem | items/call | {dev} ms | CPU build ms | {dev} M items/s | CPU build M items/s | "
             f"{dev} / CPU | max relative diff |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, what, count, t_dev, t_cpu, diff in rows:
        lines.append(f"| {name} | {what} | {count} | {t_dev * 1e3:.3f} | {t_cpu * 1e3:.1f} | {count / t_dev / 1e6:.1f} "
                     f"| {count / t_cpu / 1e6:.2f} | {t_cpu / t_dev:.0f}x | {diff:.1e} |")
    body = "\n".join([
        "## CUDA build (`scripts/bench_cuda.py`)",
        "",
        f"The CUDA kernels on {device_name} against the CPU build of the same ops on the same machine's "
        f"{torch.get_num_threads()} CPU threads, on the same inputs (took {total:.0f} s). Items are samples "
        "(hash encoding), rays (marching), samples (compositing) and pixels (splatting). The two builds emit "
        "identical marching samples; max relative diff is the largest difference between the builds over every "
        "output and gradient, relative to that tensor's largest value.",
        "",
        *lines,
    ])
    console.print(body)
    if not args.no_write:
        write_section("cuda", body, args.output)
        console.print(f"updated {args.output}")


if __name__ == "__main__":
    main()
