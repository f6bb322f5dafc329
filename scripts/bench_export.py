"""Mesh-export quality on the procedural scene, whose true surface is known: Chamfer distance and F-score.

For each backend in ``--fields`` (default: every registered one) it trains the default procedural run (what
``fields train --field NAME`` does), or takes ``--run``, exports a mesh with the default settings, and
compares ``--samples`` points spread over the mesh with as many points on the true surface
(``scenes.procedural.surface_points``). The F-score threshold is 1% of the scene box's largest side. The last
column scores the same mesh without the visibility check (faces no training camera sees kept), to show what
that check is worth. Prints a table and rewrites its section of BENCHMARKS.md.

    python scripts/bench_export.py                       # train every backend with the defaults (~2 min each)
    python scripts/bench_export.py --fields hashgrid     # only the hash grid
    python scripts/bench_export.py --run outputs/procedural/hashgrid/<run> [more runs...]  # no training
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import write_section  # noqa: E402

from fields.run.config import RunConfig  # noqa: E402
from fields.export import ExportError  # noqa: E402
from fields.export.mesh import MeshSettings, default_threshold, extract_mesh, write_mesh  # noqa: E402
from fields.export.region import export_region  # noqa: E402
from fields.export.surface_metrics import chamfer_fscore, sample_surface  # noqa: E402
from fields.backends.registry import FIELD_CONFIGS  # noqa: E402
from fields.run.folder import load_run, new_run_dir  # noqa: E402
from scenes import procedural  # noqa: E402

TARGET_FSCORE = 0.9  # for the hash grid after the default training run (issue 6)
SECTION = "export"


def train_default(field: str, output_dir: Path, console: Console) -> Path:
    """Train ``fields train --field FIELD`` with every other option at its default; returns the run folder."""
    from fields.training.trainer import Trainer

    cfg = RunConfig(field_config=FIELD_CONFIGS[field]())
    run_dir = new_run_dir(output_dir, cfg.scene.name, field)
    console.print(f"training {field} (defaults: {cfg.train.max_time} s budget) -> {run_dir}")
    Trainer(cfg, run_dir, console).train(show_progress=True)
    return run_dir


def last_metrics(run_dir: Path) -> dict:
    lines = [ln for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}


def measure(run_dir: Path, resolution: int, samples: int, console: Console) -> dict:
    """Export the run's mesh with the default settings and score it against the true surface (all zero when
    the field has no surface at the default threshold yet)."""
    run = load_run(run_dir)
    if run.config.scene.name != procedural.NAME:
        raise SystemExit(f"{run_dir}: a run of scene '{run.config.scene.name}', not '{procedural.NAME}'")
    trained = last_metrics(run.path)
    row = {"field": run.config.field, "run": str(run.path), "steps": run.step,
           "train_s": trained.get("elapsed", float("nan")), "psnr": trained.get("psnr", float("nan"))}
    settings = MeshSettings(resolution=resolution, region=export_region(run.model, run.record))  # as the CLI
    row["threshold"] = default_threshold(run.config.render, run.field.aabb, settings.opacity)
    cameras = run.split("train").cameras
    tic = time.perf_counter()
    try:
        mesh, _ = extract_mesh(run.model, settings, cameras)
        row["export_s"] = time.perf_counter() - tic
        settings.seen_only = False
        unchecked, _ = extract_mesh(run.model, settings, None)
    except ExportError as e:
        console.print(f"[yellow]{run.path}: {e}[/yellow]")
        return {**row, "faces": 0, "export_s": time.perf_counter() - tic, "chamfer": float("inf"),
                "precision": 0.0, "recall": 0.0, "fscore": 0.0, "fscore_unchecked": 0.0}
    write_mesh(mesh, run.path / "exports" / f"mesh-step-{run.step:06d}.ply")
    extent = (run.field.aabb[1] - run.field.aabb[0]).max().item()
    truth = procedural.surface_points(samples).numpy()
    scores = chamfer_fscore(sample_surface(mesh, samples), truth, 0.01 * extent)
    unchecked_f = chamfer_fscore(sample_surface(unchecked, samples), truth, 0.01 * extent)["fscore"]
    return {**row, "faces": len(mesh.faces), **scores, "fscore_unchecked": unchecked_f}


def section(rows: list[dict]) -> str:
    lines = ["## Mesh export quality (`scripts/bench_export.py`)", "",
             "Mesh export on the procedural scene, whose true surface is known.",
             "Mesh: default `fields export mesh` settings (only faces some training camera sees); scores from equal "
             "numbers of points on the mesh and on the true surface; F-score threshold tau = 1% of the box side. "
             "Last column: the same mesh keeping the faces no camera sees (`--no-seen-only`).", "",
             "| field | run | steps | train s | train PSNR | threshold | faces | export s | Chamfer | precision "
             "| recall | F-score@1% | F-score, unseen kept |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        chamfer = f"{r['chamfer']:.4f}" if r["faces"] else "no surface"
        lines.append(f"| {r['field']} | {Path(r['run']).name} | {r['steps']} | {r['train_s']:.0f} | {r['psnr']:.2f} "
                     f"| {r['threshold']:.3g} | {r['faces']} | {r['export_s']:.1f} | {chamfer} | {r['precision']:.3f} "
                     f"| {r['recall']:.3f} | {r['fscore']:.3f} | {r['fscore_unchecked']:.3f} |")
    for r in rows:
        if r["field"] == "hashgrid":
            verdict = "met" if r["fscore"] >= TARGET_FSCORE else "missed"
            lines.append(f"\nTarget F-score@1% >= {TARGET_FSCORE} for hashgrid: {verdict} by {Path(r['run']).name} "
                         f"({r['fscore']:.3f} after {r['steps']} steps / {r['train_s']:.0f} s of training).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, nargs="+", help="measure these procedural runs instead of training")
    ap.add_argument("--fields", default=",".join(FIELD_CONFIGS),
                    help="comma-separated backends to train and measure (default: all)")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where trained runs go")
    ap.add_argument("--resolution", type=int, default=256, help="mesh grid resolution")
    ap.add_argument("--samples", type=int, default=200_000, help="points on each surface")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    os.environ.setdefault("FIELDS_CACHE", str(Path.home() / ".cache" / "fields"))
    console = Console()
    fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    unknown = [f for f in fields if f not in FIELD_CONFIGS]
    if unknown:
        raise SystemExit(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELD_CONFIGS)})")
    runs = args.run or [train_default(f, args.output_dir, console) for f in fields]
    rows = [measure(r, args.resolution, args.samples, console) for r in runs]
    body = section(rows)
    console.print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
