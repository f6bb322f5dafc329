"""Benchmark the field backends on lego 200x200: size, training speed, test PSNR at two times, image fitting.

For each backend: parameters, size in MB (float32 state), training samples/s, test PSNR (every 8th test view)
after ``--snapshot`` seconds and after ``--max-time`` seconds of one training run (the snapshot is taken during
the run, outside the training clock, so its learning rate has not finished decaying), and the PSNR of a 2-D
fit of a 256x256 image (lego test view 0, resized) after ``--fit-time`` seconds. Writes the table and the
targets of issue 4 between ``<!-- bench:backends -->`` markers in BENCHMARKS.md.

    python scripts/bench_backends.py                                   # full run, ~25 minutes
    python scripts/bench_backends.py --backends rbf cam --max-time 20 --snapshot 10 --fit-time 10 --no-write
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import write_section  # noqa: E402
from fields.run.config import RunConfig, SceneConfig, TrainConfig  # noqa: E402
from fields.evaluation import evaluate  # noqa: E402
from fields.training.fit import fit_image  # noqa: E402
from fields.backends.registry import FIELD_CONFIGS  # noqa: E402
from fields.training.trainer import Trainer  # noqa: E402
from renderers.imaging import on_background  # noqa: E402

SECTION = "backends"
console = Console()


@dataclass
class Options:
    """Benchmark field backends on lego 200x200 and update BENCHMARKS.md."""

    backends: tuple[str, ...] = tuple(n for n, c in FIELD_CONFIGS.items() if c.training_steps == "rays")
    """Backends to run (the volume backends of issue 4; gaussians have no 2-D form and their own
    scripts/bench_gaussians.py)."""
    scene: str = "lego"
    """Scene name under --data-root / $FIELDS_DATA."""
    data_root: Path | None = None
    """Folder holding the scene (default: $FIELDS_DATA)."""
    max_time: float = 300.0
    """Training budget per backend, seconds."""
    snapshot: float = 120.0
    """Also evaluate when training has run this long, seconds."""
    fit_time: float = 30.0
    """Image-fitting budget per backend, seconds."""
    fit_size: int = 256
    """Side of the image fitted in 2-D (a resized test view)."""
    every: int = 8
    """Evaluate every N-th test view."""
    output: Path = Path("BENCHMARKS.md")
    """File whose section is updated."""
    write: bool = True
    """Update the output file (--no-write: print only)."""
    seed: int = 0


@dataclass
class Row:
    backend: str
    params: int = 0
    size_mb: float = 0.0
    samples_per_s: float = 0.0
    steps: int = 0
    psnr: dict[float, float] = field(default_factory=dict)
    fit_psnr: float = float("nan")


def train_and_eval(name: str, opt: Options, scene: SceneConfig, test, workdir: Path) -> Row:
    cfg = RunConfig(scene=scene, field_config=FIELD_CONFIGS[name](),
                    train=TrainConfig(max_time=opt.max_time, seed=opt.seed, ckpt_every=1 << 30))
    torch.manual_seed(opt.seed)
    trainer = Trainer(cfg, workdir / name, console)
    state = trainer.field.state_dict()
    row = Row(name, params=sum(p.numel() for p in trainer.field.parameters()),
              size_mb=sum(t.numel() * t.element_size() for t in state.values()) / 2**20)
    samples = [0]

    def snapshot(t: Trainer) -> None:
        samples[0] += int(t.last["samples"])
        if opt.snapshot not in row.psnr and t.elapsed >= opt.snapshot:
            row.psnr[opt.snapshot] = evaluate(t.model, test, opt.every, show_progress=False)["psnr"]
            console.print(f"  {name}: {row.psnr[opt.snapshot]:.2f} dB at {t.elapsed:.0f} s (step {t.step})")

    trainer.train(callbacks=[snapshot], show_progress=True)
    row.samples_per_s = samples[0] / max(trainer.elapsed, 1e-9)
    row.steps = trainer.step
    row.psnr[opt.max_time] = evaluate(trainer.model, test, opt.every,
                                      show_progress=False)["psnr"]
    console.print(f"  {name}: {row.psnr[opt.max_time]:.2f} dB at {trainer.elapsed:.0f} s (step {trainer.step}), "
                  f"{row.samples_per_s:,.0f} samples/s")
    return row


def fit_target(test, size: int) -> torch.Tensor:
    img = on_background(test.rgba(0), torch.tensor(test.background)).permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(img, size=(size, size), mode="bicubic", align_corners=False)[0] \
        .permute(1, 2, 0).clamp(0, 1)


def targets(rows: dict[str, Row], t_end: float) -> list[str]:
    """Issue 4's targets, each as met or missed by how much (only those whose backends ran)."""
    out = []
    for name, r in rows.items():
        p = r.psnr[t_end]
        out.append(f"- {name} >= 22 dB at {t_end:.0f} s: {'met' if p >= 22 else f'missed by {22 - p:.2f} dB'} "
                   f"({p:.2f} dB)")
    for t in sorted({t for r in rows.values() for t in r.psnr}):
        if "cam" in rows and "mlp" in rows:
            d = rows["cam"].psnr[t] - rows["mlp"].psnr[t]
            out.append(f"- cam beats mlp at {t:.0f} s: {'met' if d > 0 else 'missed'} ({d:+.2f} dB)")
        if "rbf" in rows and "hashgrid" in rows:
            d = rows["rbf"].psnr[t] - rows["hashgrid"].psnr[t]
            out.append(f"- rbf within 2 dB of hashgrid at {t:.0f} s: "
                       f"{'met' if d >= -2 else f'missed by {-2 - d:.2f} dB'} ({d:+.2f} dB)")
    return out


def table(rows: dict[str, Row], opt: Options) -> str:
    times = sorted({t for r in rows.values() for t in r.psnr})
    head = ["backend", "params", "MB", "train samples/s", f"steps in {opt.max_time:.0f} s"] + \
        [f"PSNR @ {t:.0f} s" for t in times] + [f"fit {opt.fit_size}px @ {opt.fit_time:.0f} s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows.values():
        cells = [r.backend, f"{r.params:,}", f"{r.size_mb:.1f}", f"{r.samples_per_s:,.0f}", f"{r.steps:,}"] + \
            [f"{r.psnr[t]:.2f}" for t in times] + [f"{r.fit_psnr:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([
        f"### Field backends ({opt.scene} 200x200, test PSNR in dB over every {opt.every}th test view)", "",
        f"The PSNR at {min(times):.0f} s is a snapshot of the {opt.max_time:.0f} s run (its learning rate was still decaying); "
        f"image fitting is a 2-D field (pixel -> RGB) on test view 0 resized to {opt.fit_size}x{opt.fit_size}.", "",
        *lines, "", "Targets (issue 4):", "", *targets(rows, opt.max_time)])


def main(opt: Options) -> None:
    unknown = set(opt.backends) - set(FIELD_CONFIGS)
    if unknown:
        raise SystemExit(f"unknown backend(s) {sorted(unknown)} (known: {', '.join(FIELD_CONFIGS)})")
    scene = SceneConfig(scene=opt.scene, data_root=opt.data_root)
    test = scene.load("test")
    target = fit_target(test, opt.fit_size)
    rows: dict[str, Row] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in opt.backends:
            console.print(f"[bold]{name}[/bold]")
            row = train_and_eval(name, opt, scene, test, Path(tmp))
            torch.manual_seed(opt.seed)
            row.fit_psnr = fit_image(FIELD_CONFIGS[name]().build_image(), target, max_time=opt.fit_time,
                                     seed=opt.seed, console=console).psnr
            console.print(f"  {name}: image fit {row.fit_psnr:.2f} dB")
            rows[name] = row
    body = table(rows, opt)
    console.print(body, highlight=False, markup=False)
    print(json.dumps({n: r.__dict__ for n, r in rows.items()}, default=str))
    if opt.write:
        write_section(SECTION, body, opt.output)
        console.print(f"Updated the '{SECTION}' section of {opt.output}")


if __name__ == "__main__":
    main(tyro.cli(Options))
