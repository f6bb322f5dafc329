"""End to end: training improves PSNR, eval writes its files, resume equals an uninterrupted run, NaN stops."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from conftest import devices, tiny_config
from fields.run.checkpoint import list_checkpoints, load_checkpoint
from fields.cli import main
from fields.evaluation import evaluate
from fields.run.folder import RunError, load_run, resolve_run
from fields.run.config import ConfigError, RunConfig
from fields.training.trainer import Trainer, TrainingError, training_device


def test_training_raises_psnr_above_bar(trained_run):
    run = load_run(trained_run)
    assert run.step == 200
    test = run.split("test")
    trained = evaluate(run.model, test, every=4, show_progress=False)
    fresh = Trainer(tiny_config(), trained_run.parent / "fresh")
    untrained = evaluate(fresh.model, test, every=4, show_progress=False)
    assert trained["psnr"] > 17.0, trained["psnr"]  # measured 19.0 dB (seed 0)
    assert trained["psnr"] > untrained["psnr"] + 3.0
    lines = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(10, 201, 10))
    assert {"loss", "psnr", "samples_per_s", "lr", "elapsed", "rays"} <= set(lines[-1])


def test_eval_takes_every_held_out_view_of_a_small_split_by_default(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    main(["eval", str(run), "--quiet"])
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["views"] == 16 == len(metrics["per_view"]) and metrics["every"] == 1  # the whole 16-view split


def test_eval_command_writes_metrics_and_grids(trained_run):
    main(["eval", str(trained_run), "--every", "8", "--quiet"])
    metrics = json.loads((trained_run / "eval" / "metrics.json").read_text())
    assert metrics["views"] == 2 and 10 < metrics["psnr"] < 60 and 0 < metrics["ssim"] <= 1
    grids = sorted((trained_run / "eval").glob("test-step-000200/view_*.png"))
    assert len(grids) == 2
    import imageio.v3 as iio

    img = iio.imread(grids[0])
    assert img.shape == (50, 4 * 50, 3)  # ground truth | render | error | depth


def test_resume_equals_uninterrupted_run(tmp_path, procedural_root):
    straight = Trainer(tiny_config(max_steps=24, ckpt_every=8), tmp_path / "a")
    straight.train(show_progress=False)

    def interrupt(trainer):
        if trainer.step == 13:
            raise KeyboardInterrupt

    cut = Trainer(tiny_config(max_steps=24, ckpt_every=8), tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        cut.train(callbacks=[interrupt], show_progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-000013.pt", "step-000008.pt"]

    resumed = Trainer(tiny_config(max_steps=24, ckpt_every=8), tmp_path / "b")
    resumed.resume()
    assert resumed.step == 13
    resumed.train(show_progress=False)
    a, b = straight.field.state_dict(), resumed.field.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    assert torch.equal(straight.grid.binary, resumed.grid.binary)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 24]


def test_cli_resume_continues_a_run(tmp_path, procedural_root):
    run = tmp_path / "run"
    Trainer(tiny_config(max_steps=6, ckpt_every=3), run).train(show_progress=False)
    cfg = (run / "config.yaml").read_text().replace("max_steps: 6", "max_steps: 9")
    (run / "config.yaml").write_text(cfg)
    main(["train", "--resume", str(run), "--quiet"])
    assert load_run(run).step == 9


def test_nan_loss_stops_and_keeps_good_checkpoints(tmp_path, procedural_root):
    def poison(trainer):
        if trainer.step == 10:
            with torch.no_grad():
                next(trainer.field.parameters()).fill_(float("nan"))

    trainer = Trainer(tiny_config(max_steps=40, ckpt_every=5), tmp_path / "nan")
    with pytest.raises(TrainingError, match=r"parameters became NaN/inf before step 10.*step-000010.pt"):
        trainer.train(callbacks=[poison], show_progress=False)
    ckpts = list_checkpoints(tmp_path / "nan")
    assert ckpts[0].name == "step-000010.pt"
    for p in ckpts:
        assert all(torch.isfinite(v).all() for v in load_checkpoint(p)["field"].values())


def test_missing_run_and_scene_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "nope")])
    assert e.value.code == 2
    assert "not a run folder" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--scene", "chair", "--data-root", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert "scene 'chair' not found" in out and "Traceback" not in out
    with pytest.raises(Exception, match="not a run folder"):
        resolve_run(tmp_path)


@pytest.mark.parametrize("device", devices())
def test_training_on_each_device_learns_and_the_run_loads_on_the_cpu(device, tmp_path, procedural_root):
    """A run trained on ``device`` (the GPU where there is one) learns like a CPU run, its checkpoint loads on the
    CPU and renders what the trainer rendered, and it resumes on that device."""
    cfg = tiny_config(max_steps=120, device=device)
    trainer = Trainer(cfg, tmp_path / device)
    assert trainer.device.type == device and next(trainer.field.parameters()).device.type == device
    assert trainer.grid.binary.device.type == device and trainer.steps.rays.rays(torch.arange(4))[0].device.type == device
    trainer.train(show_progress=False)
    test = trainer.cfg.scene.load("test")
    live = evaluate(trainer.model, test, every=4, show_progress=False)
    run = load_run(tmp_path / device)
    assert next(run.field.parameters()).device.type == "cpu"
    saved = evaluate(run.model, test, every=4, show_progress=False)
    assert saved["psnr"] == pytest.approx(live["psnr"], abs=0.05)
    assert live["psnr"] > 13.0, live["psnr"]  # CPU, seed 0: 14.7 dB after 120 steps (untrained: 10.0)
    if device != "cpu":  # the same batches (drawn on the CPU), so within rounding of a CPU run
        cpu = Trainer(tiny_config(max_steps=120), tmp_path / "cpu")
        cpu.train(show_progress=False)
        cpu_psnr = evaluate(cpu.model, test, every=4, show_progress=False)["psnr"]
        assert live["psnr"] == pytest.approx(cpu_psnr, abs=1.0)
    cfg.train.max_steps = 130
    resumed = Trainer(cfg, tmp_path / device)
    resumed.resume()
    assert resumed.step == 120 and resumed.device.type == device
    resumed.train(show_progress=False)
    assert load_run(tmp_path / device).step == 130


def test_device_option_errors_name_the_problem(procedural_root, tmp_path):
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="not a device"):
        training_device("gpu0")
    with pytest.raises(ConfigError, match="'cpu' or 'cuda'"):
        training_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
            Trainer(tiny_config(device="cuda"), tmp_path / "a")
    else:  # distillation and Gaussians stay on the CPU: asked by name that is an error, with auto a fallback
        from fields.backends.gaussians import GaussiansConfig

        cfg = tiny_config(device="cuda")
        cfg.field_config = GaussiansConfig()
        with pytest.raises(ConfigError, match="gaussians backend trains on the CPU only"):
            Trainer(cfg, tmp_path / "g")
        cfg.train.device = "auto"
        assert Trainer(cfg, tmp_path / "g").device.type == "cpu"


def test_a_second_trainer_on_the_same_run_is_refused(tmp_path, procedural_root, capsys):
    run = tmp_path / "run"
    Trainer(tiny_config(max_steps=2), run).train(show_progress=False)  # trained and released
    first = Trainer(RunConfig.load(run / "config.yaml"), run)
    first.resume()  # holds the run folder from here on
    with pytest.raises(RunError, match=rf"{run}: another trainer is writing this run folder \(pid {os.getpid()}"):
        Trainer(RunConfig.load(run / "config.yaml"), run).resume()
    with pytest.raises(SystemExit) as e:  # the command line says it in one line, exit 2
        main(["train", "--resume", str(run), "--quiet"])
    assert e.value.code == 2 and "another trainer is writing this run folder" in capsys.readouterr().out
    first.release_lock()
    again = Trainer(RunConfig.load(run / "config.yaml"), run)
    again.resume()
    again.train(show_progress=False)  # the lock is free once the first trainer lets go


def test_checkpoints_are_bounded_in_training_time_as_well_as_steps(tmp_path, procedural_root):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(max_steps=6, ckpt_every=1000, ckpt_seconds=1e-9), run)
    saved = []
    trainer.train(callbacks=[lambda t: saved.append([p.name for p in list_checkpoints(run)])], show_progress=False)
    # no step count is due, but every step used up the (tiny) time bound: a checkpoint after each
    assert [names[0] for names in saved] == [f"step-{s:06d}.pt" for s in range(1, 7)]
    none = Trainer(tiny_config(max_steps=6, ckpt_every=1000), tmp_path / "default")
    none.train(show_progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "default")] == ["step-000006.pt"]  # only the final one


def test_python_dash_m_fields_runs_the_command_line():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "fields", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--max-steps" in out.stdout, out.stderr
