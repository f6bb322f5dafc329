"""Distillation between backends: a briefly trained hash-grid teacher distilled into every backend comes within
a measured margin of the teacher's test PSNR; the clamped density loss; the stage schedule; the CLI run folder
loads in eval and resumes."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from fields.cli import main
from fields.training.distill import DistillConfig, distiller, density_error, student_config
from fields.evaluation import evaluate
from fields.backends.registry import FIELD_CONFIGS
from fields.run.folder import load_run
from fields.training.steps import StepContext

GRID = dict(n_levels=8, log2_table_size=14, base_resolution=8, max_resolution=128)
NET = dict(width=64, layers=3, skip=1, color_width=32, pos_freqs=6, dir_freqs=2)
# cam keeps the official code's 10x grid learning rate: 100 steps favour it (-1.6 dB at 10x, -3.5 at the default 1x,
# which is the better one for minutes-long training: see CAMConfig.grid_lr_scale).
SMALL = {"mlp": NET, "rbf": dict(GRID, n_rbfs=16),  # hashgrid: the teacher's
         "cam": dict(NET, plane_resolution=32, grid_lr_scale=10.0)}
STEPS = 100
# Student test PSNR may fall this far below the teacher's (every 4th test view) after STEPS steps. Set on a 19.9 dB
# teacher (hashgrid -0.9, rbf -2.4, cam -1.6, mlp -3.6 dB); with `trained_run` at 20.4 dB and the default
# DistillConfig: hashgrid (the teacher's own config) -0.0, rbf -0.5, cam -1.6, mlp -3.9 dB. The small MLP converges
# slowest: trained from scratch for the same 100 steps it ends 6.3 dB below the teacher.
MARGIN = {"hashgrid": 1.5, "rbf": 3.0, "cam": 2.5, "mlp": 4.5}
# Gaussians seeded on that teacher's surface, trained GSTEPS steps on its images and renders: measured -2.85 dB.
GSTEPS, GMARGIN = 100, 4.0


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def teacher(trained_run):
    run = load_run(trained_run)
    test = run.split("test")
    return run, test, evaluate(run.model, test, every=4, show_progress=False)["psnr"]


@pytest.mark.parametrize("name", ["hashgrid", "rbf", "cam", "mlp"])
def test_student_comes_within_margin_of_teacher(name, teacher, tmp_path):
    run, test, teacher_psnr = teacher
    field_config = run.config.field_config if name == run.config.field else FIELD_CONFIGS[name](**SMALL[name])
    cfg = student_config(run.config, field_config, tiny_config(max_steps=STEPS).train)
    student = distiller(cfg, tmp_path / name, run, DistillConfig())
    assert torch.equal(student.grid.binary, run.grid.binary) and torch.equal(student.field.aabb, run.field.aabb)
    student.train(show_progress=False)
    psnr = evaluate(student.model, test, every=4, show_progress=False)["psnr"]
    assert psnr > teacher_psnr - MARGIN[name], f"{name}: {psnr:.2f} dB, teacher {teacher_psnr:.2f} dB"


def test_density_loss_is_clamped_where_the_teacher_is():
    lo, hi = -10.0, 2.0
    student = torch.tensor([5.0, 0.0, -20.0, 0.0, 1.0], requires_grad=True)
    teacher = torch.tensor([9.0, 9.0, -30.0, -30.0, -1.0])
    err = density_error(student, teacher, lo, hi)
    err.sum().backward()
    # beyond the teacher's bound on the same side: no loss, no gradient; short of it: pulled to the bound
    assert err.tolist() == pytest.approx([0.0, 4.0, 0.0, 100.0, 4.0])
    assert student.grad.tolist() == pytest.approx([0.0, -4.0, 0.0, 20.0, 4.0])


def test_points_stage_runs_at_its_learning_rate_scale(trained_run, tmp_path):
    run = load_run(trained_run)
    cfg = student_config(run.config, FIELD_CONFIGS["mlp"](**NET), tiny_config(max_steps=8).train)
    student = distiller(cfg, tmp_path, run, DistillConfig(points_until=0.5, points_lr_scale=4.0))
    stages = []
    t, group = cfg.train, student.optimizer.param_groups[0]
    while not student.done():
        ctx = StepContext(student.step, student.step_generator(), student.progress(), student.budget_spent())
        stages.append(student.steps.stage(ctx))
        warmup = min(1.0, (student.step + 1) / max(t.warmup_steps, 1))
        scheduled = group["base_lr"] * warmup * group.get("lr_final", t.lr_final) ** ctx.progress  # the plain schedule
        lr = student.train_step()["lr"]
        assert lr == pytest.approx(scheduled * (4.0 if stages[-1] == "points" else 1.0))
        assert student.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    assert stages == ["points"] * 4 + ["render"] * 4


def test_cli_distill_stages_run_folder_eval_and_resume(trained_run, tmp_path):
    args = ["distill", "--teacher", str(trained_run), "--student", "rbf", "--output-dir", str(tmp_path),
            "--max-steps", "10", "--max-time", "None", "--points-until", "0.3", "--finetune-steps", "4",
            "--active-learning", "--log-every", "1", "--ckpt-every", "7", "--target-samples", "4096",
            "--rbf.n-levels", "4", "--rbf.log2-table-size", "12", "--rbf.n-rbfs", "8", "--quiet"]
    main(args)
    (run_dir,) = (tmp_path / "procedural" / "rbf").iterdir()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # a record after step s describes step s - 1: points for 30% of the 10 steps, render, then 4 fine-tuning steps
    assert [r["stage"] for r in records] == ["points"] * 3 + ["render"] * 7 + ["finetune"] * 4
    assert all(r["psnr"] is None for r in records[:3]) and all(r["psnr"] > 5 for r in records[3:])
    run = load_run(run_dir)
    assert run.step == 14 and run.config.field == "rbf" and run.config.scene == load_run(trained_run).config.scene
    main(["eval", str(run_dir), "--every", "8", "--quiet"])
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["psnr"] > 10

    # resume from the step-7 checkpoint with a larger fine-tuning budget: continues where it stopped
    (run_dir / "checkpoints" / "step-000014.pt").unlink()
    cfg = (run_dir / "config.yaml").read_text().replace("finetune_steps: 4", "finetune_steps: 6")
    (run_dir / "config.yaml").write_text(cfg)
    main(["distill", "--resume", str(run_dir), "--quiet"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 17)) and records[-1]["stage"] == "finetune"
    assert load_run(run_dir).step == 16


def test_cli_distill_into_gaussians_seeds_on_the_teacher_surface(teacher, trained_run, tmp_path):
    """`--student gaussians` takes the seeded path (distill_to_gaussians) and writes a run eval reads."""
    main(["distill", "--teacher", str(trained_run), "--student", "gaussians", "--output-dir", str(tmp_path),
          "--max-steps", str(GSTEPS), "--max-time", "None", "--quiet"])
    (run_dir,) = (tmp_path / "procedural" / "gaussians").iterdir()
    run = load_run(run_dir)
    assert run.config.field == "gaussians" and run.step == GSTEPS
    # its cameras.json holds the scene's training cameras, not the teacher's extra spiral views it trained on
    assert torch.equal(run.record.cameras.c2w, load_run(trained_run).record.cameras.c2w)
    _, test, teacher_psnr = teacher
    student_psnr = evaluate(run.model, test, every=4, show_progress=False)["psnr"]
    print(f"gaussians student {student_psnr:.2f} dB, teacher {teacher_psnr:.2f} dB")
    assert student_psnr > teacher_psnr - GMARGIN
