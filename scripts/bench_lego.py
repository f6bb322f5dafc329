"""Hash grid on lego 200x200: test PSNR/SSIM at 60, 120 and 300 s of training time (eval time excluded),
on every 8th test view, and training samples/s. Writes its section of BENCHMARKS.md and a PSNR-vs-time plot.

    FIELDS_DATA=../shared/scenes/nerf_synthetic_200 python scripts/bench_lego.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, write_section  # noqa: E402
from fields.run.config import RunConfig, SceneConfig, TrainConfig  # noqa: E402
from fields.evaluation import evaluate  # noqa: E402
from fields.backends.registry import FIELD_CONFIGS  # noqa: E402
from fields.run.folder import new_run_dir  # noqa: E402
from fields.training.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default="lego")
    ap.add_argument("--field", default="hashgrid", choices=list(FIELD_CONFIGS))
    ap.add_argument("--marks", type=float, nargs="+", default=[60, 120, 300], help="training seconds to evaluate at")
    ap.add_argument("--every", type=int, default=8, help="evaluate every N-th test view")
    ap.add_argument("--device", default="cpu", help="training device (cpu, cuda, auto); a GPU run gets its own section")
    ap.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "bench")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()

    cfg = RunConfig(scene=SceneConfig(scene=args.scene), field_config=FIELD_CONFIGS[args.field](),
                    train=TrainConfig(max_time=max(args.marks), device=args.device))
    run_dir = new_run_dir(args.output_dir, args.scene, args.field)
    trainer = Trainer(cfg, run_dir)
    test = cfg.scene.load("test")
    marks, rows, totals = sorted(args.marks), [], {"samples": 0}

    def checkpoint_eval(tr: Trainer) -> None:
        totals["samples"] += tr.last["samples"]
        if marks and tr.elapsed >= marks[0]:
            mark = marks.pop(0)
            t0 = time.perf_counter()
            res = evaluate(tr.model, test, args.every, show_progress=False)
            rows.append({"mark": mark, "elapsed": tr.elapsed, "step": tr.step, "psnr": res["psnr"], "ssim": res["ssim"],
                         "samples_per_s": totals["samples"] / tr.elapsed, "render_s": res["seconds_per_view"],
                         "eval_s": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), flush=True)

    trainer.train(callbacks=[checkpoint_eval])
    (run_dir / "bench.json").write_text(json.dumps(rows, indent=2))
    table = ["| training time | steps | test PSNR (dB) | test SSIM | train samples/s | render s/view |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['mark']:.0f} s | {r['step']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
              f"{r['samples_per_s'] / 1e6:.3f} M | {r['render_s']:.2f} |" for r in rows]
    gpu = trainer.device.type == "cuda"
    where = f" on {torch.cuda.get_device_name(trainer.device)}" if gpu else ""
    body = (f"## {args.field} on {args.scene} 200x200{where} (every {args.every}th test view, "
            f"{len(range(0, len(test), args.every))} views)\n\n" + "\n".join(table) +
            "\n\nPSNR/SSIM on images composited on white; eval time is excluded from training time.")
    print(body)
    if not args.no_write:
        name = f"{args.scene}_{args.field}" + ("_cuda" if gpu else "")
        plot(rows, ROOT / "docs" / f"bench_{name}.png", f"{args.field} on {args.scene}{where}")
        section = f"lego-{args.field}" + ("-cuda" if gpu else "")
        write_section(section, body + f"\n\n![PSNR vs time](docs/bench_{name}.png)")


def plot(rows: list[dict], path: Path, title: str) -> None:
    """PSNR against training time, for people who would rather look than read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot([r["elapsed"] for r in rows], [r["psnr"] for r in rows], "o-")
    ax.set(xlabel="training time (s)", ylabel="test PSNR (dB)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
