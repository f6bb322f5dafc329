"""Anti-aliased Gaussians (``--gaussians.antialiased``: Mip-Splatting's 2-D mip filter, with its 3-D filter or without
it, ``--gaussians.filter3d``) rendered at other resolutions than they were trained at, against the same Gaussians
without anti-aliasing (issue 25, part 5).

Lego is trained for a fixed number of steps at 200x200 and at 100x100 (downscale 1 and 2), each with and without
anti-aliasing, and every 8th test view is rendered at 200, 100 and 50 pixels against the test images downscaled
to that size (area averaging, as the loader downscales). Rendering below the training resolution is Mip-Splatting's
zoom-out case (the 0.3 px dilation of every Gaussian, unfiltered, adds energy and fattens thin structures);
above it, the zoom-in case (Gaussians thinner than a training pixel show as needles). Equal steps, not equal time:
the figures are about image quality, so they hold on a loaded machine. Writes the ``antialias`` section of
BENCHMARKS.md and docs/antialias.png (PSNR against render size).

    FIELDS_DATA=../shared/scenes/nerf_synthetic_200 python scripts/bench_antialias.py --steps 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, machine, write_section  # noqa: E402
from fields.backends.gaussians import GaussiansConfig  # noqa: E402
from fields.evaluation import evaluate  # noqa: E402
from fields.run.config import RunConfig, SceneConfig, TrainConfig  # noqa: E402
from fields.run.folder import new_run_dir  # noqa: E402
from fields.training.trainer import Trainer  # noqa: E402

RENDER_DOWNSCALES = (1, 2, 4)  # 200, 100 and 50 pixels for lego at 200x200
VARIANTS = {"no": {"antialiased": False}, "2-D filter": {"antialiased": True, "filter3d": False},
            "2-D + 3-D filters": {"antialiased": True, "filter3d": True}}  # label -> GaussiansConfig changes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default="lego")
    ap.add_argument("--steps", type=int, default=2000, help="training steps of each run")
    ap.add_argument("--train-downscales", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--every", type=int, default=8, help="evaluate every N-th test view")
    ap.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "bench")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md and docs/ alone")
    args = ap.parse_args()

    tests = {s: SceneConfig(scene=args.scene, downscale=s).load("test") for s in RENDER_DOWNSCALES}
    sizes = {s: "x".join(map(str, t.cameras.size(0))) for s, t in tests.items()}
    rows = []
    for train_ds in args.train_downscales:
        for label, change in VARIANTS.items():
            cfg = RunConfig(scene=SceneConfig(scene=args.scene, downscale=train_ds),
                            field_config=dataclasses.replace(GaussiansConfig(), **change),
                            train=TrainConfig(max_time=None, max_steps=args.steps))
            trainer = Trainer(cfg, new_run_dir(args.output_dir, args.scene, "gaussians-antialias"))
            trainer.train(show_progress=False)
            row = {"trained": sizes[train_ds], "antialiased": label, "gaussians": len(trainer.field)}
            for s, test in tests.items():
                row[sizes[s]] = evaluate(trainer.model, test, args.every, show_progress=False)["psnr"]
            rows.append(row)
            print(json.dumps(row), flush=True)

    cols = [sizes[s] for s in RENDER_DOWNSCALES]
    table = ["| trained at | anti-aliased | Gaussians | " + " | ".join(f"PSNR at {c} (dB)" for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    table += [f"| {r['trained']} | {r['antialiased']} | {r['gaussians']} | "
              + " | ".join(f"{r[c]:.2f}" for c in cols) + " |" for r in rows]
    body = (f"## anti-aliased Gaussians at other resolutions (bench_antialias.py)\n\n{args.scene}, {args.steps} "
            f"steps per run on {machine()}; every {args.every}th test view rendered at each size against the test "
            "images downscaled to it (area averaging). The training resolution's column is the usual test; the others "
            "zoom out (smaller) or in (larger).\n\n" + "\n".join(table) + "\n\n![anti-aliasing](docs/antialias.png)")
    print(body)
    if not args.no_write:
        plot(rows, cols, ROOT / "docs" / "antialias.png")
        write_section("antialias", body)


def plot(rows: list[dict], cols: list[str], path: Path) -> None:
    """PSNR against render size, one line per run (dashed without anti-aliasing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.plot(cols, [r[c] for c in cols], "o--" if r["antialiased"] == "no" else "o-",
                label=f"trained at {r['trained']}, anti-aliasing: {r['antialiased']}")
    ax.set_xlabel("render size")
    ax.set_ylabel("test PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
