"""Distillation against training from scratch on lego 200x200: how soon each student reaches the teacher's
test PSNR - 1 dB by `fields distill` and by ordinary training, with the same student config on the same
machine in the same script run.

Teachers: a hash grid trained for ``--teacher-time`` s (or ``--teacher RUN``) for the mlp, rbf and cam students,
and an MLP (``--mlp-teacher RUN``, or trained for ``--teacher-time`` s) for the hashgrid student. Every
``--eval-every`` s of training clock each run is evaluated on ``--views`` test views (outside the clock; the
time to target is therefore known to within one interval), and at the end on every 8th test view. Writes
the table to the ``distill`` section of BENCHMARKS.md and a PSNR-vs-time plot to docs/bench_distill.png.

    FIELDS_DATA=/path/to/nerf_synthetic_200 python scripts/bench_distill.py                 # ~1.5 hours
    python scripts/bench_distill.py --teacher-time 20 --budget 20 --scratch-budget 20 --students mlp --no-write
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, write_section  # noqa: E402
from fields.run.config import RunConfig, SceneConfig, TrainConfig  # noqa: E402
from fields.training.distill import DistillConfig, distiller, student_config  # noqa: E402
from fields.evaluation import evaluate  # noqa: E402
from fields.backends.registry import FIELD_CONFIGS  # noqa: E402
from fields.run.folder import LoadedRun, load_run, new_run_dir  # noqa: E402
from fields.training.trainer import Trainer  # noqa: E402

SECTION = "distill"
PLOT = ROOT / "docs" / "bench_distill.png"
console = Console()


@dataclass
class Options:
    """Time for distillation and for training from scratch to reach teacher PSNR - 1 dB; updates BENCHMARKS.md."""

    students: tuple[str, ...] = ("mlp", "rbf", "cam", "hashgrid")
    """Student backends (hashgrid learns from the MLP teacher, the others from the hash-grid teacher)."""
    scene: str = "lego"
    data_root: Path | None = None
    """Folder holding the scene (default: $FIELDS_DATA)."""
    downscale: int = 1
    """Divide image resolution by this integer factor."""
    teacher: Path | None = None
    """Hash-grid teacher run (default: train one for --teacher-time s)."""
    mlp_teacher: Path | None = None
    """MLP teacher run for the hashgrid student (default: train one for --teacher-time s)."""
    teacher_time: float = 300.0
    """Training time of a teacher trained here, seconds."""
    budget: float = 300.0
    """Distillation budget per student, seconds."""
    scratch_budget: float = 600.0
    """Training-from-scratch budget per student, seconds."""
    eval_every: float = 20.0
    """Seconds of training clock between PSNR checks on --views test views."""
    views: int = 4
    """Test views of the periodic checks (evenly spaced)."""
    gap: float = 1.0
    """Target: teacher PSNR minus this, dB."""
    output_dir: Path = ROOT / "outputs" / "bench-distill"
    """Teacher and student run folders go here."""
    output: Path = ROOT / "BENCHMARKS.md"
    write: bool = True
    """Update BENCHMARKS.md and the plot (--no-write: print only)."""
    seed: int = 0


@dataclass
class Curve:
    """PSNR on the check views against training-clock seconds, and the final PSNR on every 8th test view."""

    points: list[tuple[float, int, float]] = field(default_factory=list)  # (elapsed, step, psnr)
    final: float = float("nan")
    seconds: float = 0.0

    def time_to(self, target: float) -> float | None:
        return next((t for t, _, p in self.points if p >= target), None)

    def crossing(self, level: float) -> float | None:
        """Training time at which the checks first reach ``level``, interpolated linearly between the two checks
        around the crossing (the first check's time where the run starts at or above it); None if they never do."""
        before = None
        for t, _, p in self.points:
            if p >= level:
                return t if before is None else before[0] + (t - before[0]) * (level - before[1]) / (p - before[1])
            before = (t, p)
        return None


def level_rows(name: str, tname: str, distilled: Curve, scratch: Curve, n: int = 4) -> list[str]:
    """The highest ``n`` whole-dB levels that both runs cross after their first checks: when each got there (see
    ``Curve.crossing``) and the ratio."""
    top = math.floor(min(max(p for _, _, p in c.points) for c in (distilled, scratch)))
    start = math.ceil(max(distilled.points[0][2], scratch.points[0][2]) + 1e-9)
    rows = []
    for level in range(max(start, top - n + 1), top + 1):
        td, ts = distilled.crossing(level), scratch.crossing(level)
        rows.append(f"| {name} <- {tname} | {level} | {td:.0f} s | {ts:.0f} s | {ts / td:.1f}x |")
    return rows


def train_config(opt: Options, seconds: float) -> TrainConfig:
    return TrainConfig(max_time=seconds, seed=opt.seed, ckpt_every=1 << 30)


def checks(opt: Options, test, curve: Curve):
    """A Trainer callback that evaluates on a few test views every ``eval_every`` s of training clock."""
    every = max(len(test) // opt.views, 1)

    def check(t: Trainer) -> None:
        if t.elapsed >= opt.eval_every * (len(curve.points) + 1) or t.done():
            p = evaluate(t.model, test, every, show_progress=False)["psnr"]
            curve.points.append((t.elapsed, t.step, p))
            console.print(f"    {t.elapsed:6.1f} s  step {t.step:5d}  {p:.2f} dB")
    return check


def run(trainer: Trainer, opt: Options, test) -> Curve:
    curve = Curve()
    trainer.train(callbacks=[checks(opt, test, curve)], show_progress=False)
    curve.final = evaluate(trainer.model, test, 8, show_progress=False)["psnr"]
    curve.seconds = trainer.elapsed
    return curve


def teacher_run(path: Path | None, field_name: str, opt: Options, scene: SceneConfig) -> LoadedRun:
    if path is None:
        cfg = RunConfig(scene=scene, field_config=FIELD_CONFIGS[field_name](),
                        train=train_config(opt, opt.teacher_time))
        path = new_run_dir(opt.output_dir, scene.name, field_name)
        console.print(f"[bold]teacher {field_name}[/bold]: training {opt.teacher_time:.0f} s into {path}")
        Trainer(cfg, path, console).train(show_progress=True)
    run = load_run(path)
    theirs = run.config.scene
    if (theirs.folder().resolve(), theirs.downscale) != (scene.folder().resolve(), scene.downscale):
        raise SystemExit(f"{path}: teacher trained on {theirs.folder()} (downscale {theirs.downscale}), "
                         f"not on the benchmark's {scene.folder()} (downscale {scene.downscale})")
    return run


def fmt_time(t: float | None, budget: float) -> str:
    return f"{t:.0f} s" if t is not None else f"> {budget:.0f} s"


def speedup(distilled: float | None, scratch: float | None, scratch_budget: float) -> str:
    if distilled is None:
        return "n/a (distillation missed the target)"
    if scratch is None:
        return f"> {scratch_budget / max(distilled, 1e-9):.1f}x"
    return f"{scratch / max(distilled, 1e-9):.1f}x"


def main(opt: Options) -> None:
    unknown = set(opt.students) - set(FIELD_CONFIGS)
    if unknown:
        raise SystemExit(f"unknown student backend(s) {sorted(unknown)} (known: {', '.join(FIELD_CONFIGS)})")
    scene = SceneConfig(scene=opt.scene, data_root=opt.data_root, downscale=opt.downscale)
    test = scene.load("test")
    teachers: dict[str, LoadedRun] = {}
    teacher_psnr: dict[str, float] = {}
    rows, levels, curves = [], [], {}
    for name in opt.students:
        tname = "mlp" if name == "hashgrid" else "hashgrid"
        if tname not in teachers:
            teachers[tname] = teacher_run(opt.mlp_teacher if tname == "mlp" else opt.teacher, tname, opt, scene)
            t = teachers[tname]
            teacher_psnr[tname] = evaluate(t.model, test, max(len(test) // opt.views, 1),
                                           show_progress=False)["psnr"]
            console.print(f"teacher {tname} ({t.path}): {teacher_psnr[tname]:.2f} dB on the check views")
        teacher, target = teachers[tname], teacher_psnr[tname] - opt.gap
        cfg = student_config(teacher.config, FIELD_CONFIGS[name](), train_config(opt, opt.budget))
        console.print(f"[bold]{name} <- {tname}[/bold] (target {target:.2f} dB): distillation")
        torch.manual_seed(opt.seed)
        distilled = run(distiller(cfg, new_run_dir(opt.output_dir, scene.name, f"{name}-distilled"), teacher,
                                  DistillConfig(), console), opt, test)
        console.print(f"[bold]{name}[/bold]: training from scratch")
        cfg.train = train_config(opt, opt.scratch_budget)
        scratch = run(Trainer(cfg, new_run_dir(opt.output_dir, scene.name, f"{name}-scratch"), console), opt, test)
        curves[name] = (tname, target, distilled, scratch)
        td, ts = distilled.time_to(target), scratch.time_to(target)
        # where the target is out of the student's reach in both budgets: how soon distillation matches the
        # best that training from scratch reached, against when scratch first got there
        best = max(p for _, _, p in scratch.points)
        bd, bs = distilled.time_to(best), scratch.time_to(best)
        rows.append(f"| {name} <- {tname} | {teacher_psnr[tname]:.2f} | {fmt_time(td, distilled.seconds)} | "
                    f"{fmt_time(ts, scratch.seconds)} | {speedup(td, ts, scratch.seconds)} | {best:.2f} | "
                    f"{fmt_time(bd, distilled.seconds)} | {fmt_time(bs, scratch.seconds)} | "
                    f"{speedup(bd, bs, scratch.seconds)} | "
                    f"{distilled.final:.2f} ({distilled.seconds:.0f} s) | {scratch.final:.2f} ({scratch.seconds:.0f} s) |")
        levels += level_rows(name, tname, distilled, scratch)
    mlp = curves.get("mlp")
    verdict = []
    if mlp is not None:
        td, ts = mlp[2].time_to(mlp[1]), mlp[3].time_to(mlp[1])
        met = td is not None and (ts is None and mlp[3].seconds >= 5 * td or ts is not None and ts >= 5 * td)
        verdict = ["", f"Target (issue 7): distillation reaches teacher - {opt.gap:g} dB at least 5x sooner than "
                   f"training from scratch for the MLP student: {'met' if met else 'not met'} "
                   f"({speedup(td, ts, mlp[3].seconds)})."]
    body = "\n".join([
        f"### Distillation vs training from scratch ({opt.scene}, {'x'.join(map(str, test.cameras.size(0)))})", "",
        f"Time (training clock, checks every {opt.eval_every:g} s on {opt.views} test views, eval excluded) until "
        f"the student reaches the target, the teacher's PSNR on those views - {opt.gap:g} dB, and until it reaches "
        f"the best PSNR its run from scratch reached; final PSNR on every 8th test view. "
        f"Default student configs; teachers trained {opt.teacher_time:g} s unless given.", "",
        "| student <- teacher | teacher dB (check views) | to target: distillation | from scratch | speed-up | "
        "best scratch dB (check views) | to it: distillation | from scratch | speed-up | "
        "final distilled dB | final scratch dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows, *verdict, "",
        "Time to the highest whole-dB levels both runs reach (check views; crossing times interpolated between "
        "checks):", "",
        "| student <- teacher | level (dB) | distillation | from scratch | speed-up |", "|---|---|---|---|---|",
        *levels, "",
        f"![PSNR vs time, distillation and from scratch](docs/{PLOT.name})"])
    console.print(body, highlight=False, markup=False)
    print(json.dumps({n: {"teacher": c[0], "target": c[1], "distilled": c[2].__dict__, "scratch": c[3].__dict__}
                      for n, c in curves.items()}))
    if opt.write:
        plot(curves, PLOT)
        write_section(SECTION, body, opt.output)
        console.print(f"Updated the '{SECTION}' section of {opt.output} and {PLOT}")


def plot(curves: dict, path: Path) -> None:
    """PSNR on the check views against training time, one panel per student."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), dpi=110, squeeze=False)
    for ax, (name, (tname, target, distilled, scratch)) in zip(axes[0], curves.items()):
        for label, c in (("distilled", distilled), ("from scratch", scratch)):
            ax.plot([t for t, _, _ in c.points], [p for _, _, p in c.points], "o-", ms=3, label=label)
        ax.axhline(target, color="gray", ls="--", lw=1, label="target (teacher - gap)")
        ax.set(title=f"{name} <- {tname}", xlabel="training time (s)", ylabel="test PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(Options))
