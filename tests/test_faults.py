"""Faults injected into training: kill -9 in a loop, corrupt checkpoints, a full or read-only disk, NaN/inf
losses and gradients, and malicious checkpoint / config files."""

from __future__ import annotations

import errno
import io
import os
import pickle
import random
import shutil

import pytest
import torch
import yaml
from rich.console import Console

from conftest import tiny_config
from faults import CreatesFile, flip_byte, kill_loop, truncate
from fields.run.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, state_digest
from fields.cli import main
from fields.run.config import ConfigError, RunConfig
from fields.run.folder import load_run
from fields.training.trainer import Trainer, TrainingError


def quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, procedural_root):
    """A tiny run with checkpoints at steps 3 and 6."""
    run = tmp_path_factory.mktemp("faults") / "run"
    Trainer(tiny_config(max_steps=6, ckpt_every=3), run, quiet()).train(show_progress=False)
    assert [p.name for p in list_checkpoints(run)] == ["step-000006.pt", "step-000003.pt"]
    return run


@pytest.fixture
def run_copy(two_checkpoints, tmp_path):
    shutil.copytree(two_checkpoints, tmp_path / "run")
    return tmp_path / "run"


# -- kill -9 ---------------------------------------------------------------------------------------------------
def test_kill_9_ten_times_loses_at_most_one_checkpoint_interval(tmp_path, procedural_root):
    report = kill_loop(tmp_path / "run", kills=10, ckpt_every=2, max_delay=1.0, seed=1)
    assert report.problems == []
    assert report.tried == report.survived == 10 and report.during_write >= 3
    assert report.max_lost <= 2
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp"))  # the last resume removed partial writes


# -- corrupt checkpoints ---------------------------------------------------------------------------------------
def test_cut_and_flipped_checkpoints_are_detected_or_unchanged(two_checkpoints, tmp_path):
    rng = random.Random(0)
    good = two_checkpoints / "checkpoints" / "step-000006.pt"
    digest = state_digest(load_checkpoint(good))
    bad = tmp_path / "step-000006.pt"
    for _ in range(10):
        shutil.copy(good, bad)
        truncate(bad, rng)
        with pytest.raises(CheckpointError, match=r"step-000006.pt: not a readable checkpoint"):
            load_checkpoint(bad)
    detected = 0
    for _ in range(40):
        shutil.copy(good, bad)
        flip_byte(bad, rng)
        try:
            state = load_checkpoint(bad)
        except CheckpointError as e:
            assert str(e).startswith(str(bad)) and "\n" not in str(e)
            detected += 1
        else:  # a flip in zip padding or metadata that the contents do not depend on
            assert state_digest(state) == digest
    assert detected >= 20


def test_resume_falls_back_to_the_previous_good_checkpoint(run_copy, capsys):
    newest = run_copy / "checkpoints" / "step-000006.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: only the digest notices
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"step-000006.pt: corrupt checkpoint.*trying the previous"):
        assert load_run(run_copy).step == 3
    cfg = RunConfig.load(run_copy / "config.yaml")
    cfg.train.max_steps = 5
    cfg.save(run_copy / "config.yaml")
    main(["train", "--resume", str(run_copy), "--quiet"])
    out = capsys.readouterr()
    assert "Resumed" in out.out and "step-000003.pt" in out.out and "Traceback" not in out.out + out.err


# -- full or read-only disk ------------------------------------------------------------------------------------
def out_of_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def resume_to(run, steps: int) -> None:
    cfg = RunConfig.load(run / "config.yaml")
    cfg.train.max_steps = steps
    cfg.save(run / "config.yaml")


def test_disk_full_stops_with_what_was_saved(run_copy, monkeypatch, capsys):
    import fields.run.checkpoint as ckpt

    resume_to(run_copy, 9)
    monkeypatch.setattr(ckpt.torch, "save", out_of_space)  # the write of the step-9 checkpoint fails
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", str(run_copy), "--quiet"])
    out = capsys.readouterr().out
    folder = run_copy / "checkpoints"
    assert e.value.code == 1 and "Traceback" not in out, out
    assert f"cannot write checkpoint {folder / 'step-000009.pt'} (No space left on device)" in out
    assert f"training stopped at step 9. Saved: {folder / 'step-000006.pt'}" in out.replace("\n", "")
    assert sorted(p.name for p in folder.iterdir()) == ["step-000003.pt", "step-000006.pt"]  # no temp file left
    assert load_checkpoint(folder / "step-000006.pt")["step"] == 6


def test_read_only_run_folder_stops_before_writing(run_copy, monkeypatch, capsys):
    import fields.run.checkpoint as ckpt

    resume_to(run_copy, 9)
    before = {p.name: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    monkeypatch.setattr(ckpt.tempfile, "mkstemp", read_only)  # every atomic write starts with mkstemp
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", str(run_copy), "--quiet"])
    out = capsys.readouterr().out.replace("\n", "")
    assert e.value.code == 1 and "Traceback" not in out, out
    assert f"cannot write to the run folder {run_copy} (Read-only file system)" in out
    assert f"Saved: {run_copy / 'checkpoints' / 'step-000006.pt'}" in out
    assert {p.name: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


# -- NaN / inf -------------------------------------------------------------------------------------------------
def test_nan_gradients_stop_before_a_nan_checkpoint_is_written(tmp_path, procedural_root):
    def poison(trainer):
        if trainer.step == 4:
            next(trainer.field.parameters()).register_hook(lambda g: g * float("nan"))

    trainer = Trainer(tiny_config(max_steps=20, ckpt_every=1), tmp_path / "run", quiet())
    with pytest.raises(TrainingError, match=r"gradients became NaN/inf at step 4.*Saved: .*step-000004.pt"):
        trainer.train(callbacks=[poison], show_progress=False)
    ckpts = list_checkpoints(tmp_path / "run")
    assert ckpts[0].name == "step-000004.pt"
    for p in ckpts:
        assert all(torch.isfinite(v).all() for v in load_checkpoint(p)["field"].values())


def test_inf_loss_stops_and_keeps_good_checkpoints(tmp_path, procedural_root, monkeypatch):
    import renderers.model as model_module

    real = model_module.render_rays

    def render(*args, **kwargs):
        out = real(*args, **kwargs)
        return {**out, "rgb": out["rgb"] * float("inf")} if len(list_checkpoints(tmp_path / "run")) == 2 else out

    monkeypatch.setattr(model_module, "render_rays", render)
    trainer = Trainer(tiny_config(max_steps=20, ckpt_every=2), tmp_path / "run", quiet())
    with pytest.raises(TrainingError, match=r"loss became NaN/inf \(\w+\) at step 4.*Saved: .*step-000004.pt"):
        trainer.train(show_progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000004.pt", "step-000002.pt"]


def test_saving_nan_weights_is_refused(tmp_path, procedural_root):
    trainer = Trainer(tiny_config(max_steps=1), tmp_path / "run", quiet())
    with torch.no_grad():
        next(trainer.field.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match="NaN/inf at step 0; not saving"):
        trainer.save()
    assert list_checkpoints(tmp_path / "run") == []


# -- code in files ---------------------------------------------------------------------------------------------
def test_a_crafted_pickle_in_a_checkpoint_is_refused(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    evil = run_copy / "checkpoints" / "step-000009.pt"
    torch.save({"step": 9, "field": CreatesFile(marker)}, evil)
    # The payload is real: unpickling it without weights_only creates the file.
    proof = tmp_path / "proof"
    torch.save({"x": CreatesFile(proof)}, tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)
    assert proof.exists()
    with pytest.raises(CheckpointError, match=r"step-000009.pt: refused: it holds pickled objects"):
        load_checkpoint(evil)
    (tmp_path / "old.pt").write_bytes(pickle.dumps({"step": 1, "x": CreatesFile(marker)}))  # legacy format
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="refused"):
        assert load_run(run_copy).step == 6  # resume and load fall back to the good one
    assert not marker.exists()


def test_a_python_tag_in_config_yaml_is_refused(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    payload = f"!!python/object/apply:os.system ['touch {marker}']\n"
    yaml.unsafe_load(payload)  # the payload is real
    assert marker.exists()
    marker.unlink()
    (run_copy / "config.yaml").write_text(f"field: hashgrid\ntrain: {payload}")
    with pytest.raises(ConfigError, match=r"config.yaml: not valid YAML"):
        RunConfig.load(run_copy / "config.yaml")
    with pytest.raises(SystemExit) as e:
        main(["eval", str(run_copy)])
    assert e.value.code == 2 and not marker.exists()
