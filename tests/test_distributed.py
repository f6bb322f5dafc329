"""Data-parallel training (issue 24) on loopback: 2 gloo processes under torchrun on this machine.

The multi-process tests are marked ``distributed`` (``-m "not distributed"`` leaves them out): each starts
torch in two or three processes, which costs more than its few seconds of training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fields.evaluation import evaluate
from fields.run.config import RunConfig, SettingError
from fields.run.folder import RunLock, load_run
from fields.training.distributed import DistConfig, Distributed, torchrun_command
from fields.training.steps import StepContext
from fields.training.trainer import Trainer

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
SMALL = ["--downscale", "4", "--max-time", "None", "--hashgrid.log2-table-size", "14", "--grid-resolution", "32",
         "--target-samples", "4096", "--init-rays", "256", "--log-every", "10", "--quiet"]


def test_each_rank_draws_its_own_share_of_the_global_batch():
    ranks = [StepContext(3, torch.Generator(), 0.0, False, rank=r, world=3) for r in range(3)]
    assert sum(c.share(1001) for c in ranks) == 1001 and [c.share(1001) for c in ranks] == [334, 334, 333]
    streams = [Distributed(r, 2, r, 10.0).draws(seed=0, step=5) for r in range(2)]
    a, b = (torch.randint(0, 1 << 30, (8,), generator=g) for g in streams)
    assert not torch.equal(a, b)  # different streams per rank ...
    again = torch.randint(0, 1 << 30, (8,), generator=Distributed(0, 2, 0, 10.0).draws(seed=0, step=5))
    assert torch.equal(a, again)  # ... that a resumed job draws again
    one = StepContext(3, torch.Generator(), 0.0, False)
    assert one.draws is one.gen and one.share(1001) == 1001  # one process: everything from the step's generator


def test_launch_options_stay_with_the_launcher_and_bad_ones_are_refused():
    cmd = torchrun_command(["train", "--nproc", "2", "--max-restarts=1", "--quiet"], DistConfig(nproc=2), "x")
    tail = cmd[cmd.index("fields"):]
    assert tail == ["fields", "train", "--quiet", "--run-name", "x"] and "--nproc-per-node" in cmd
    for bad in (DistConfig(nproc=0), DistConfig(max_restarts=-1), DistConfig(collective_timeout=0),
                DistConfig(run_name="a/b")):
        with pytest.raises(SettingError):
            bad.validate()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, procedural_root):
    """tests/dist_worker.py on 2 ranks: a 60-step hash grid (run folder OUT/hashgrid) and a 30-step Gaussians run."""
    out = tmp_path_factory.mktemp("two_ranks")
    done = subprocess.run([*TORCHRUN, str(TESTS / "dist_worker.py"), str(out), "60"], env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.distributed
def test_ranks_keep_identical_weights_grids_and_gaussians(two_ranks):
    _, (r0, r1) = two_ranks
    for backend in ("hashgrid", "gaussians"):
        for key in ("weights", "grids", "sizes", "psnr"):
            assert r0[backend][key] == r1[backend][key], (backend, key)
    assert len(r0["hashgrid"]["grids"]) == 8  # updates at steps 0, 8, ..., 56: every one compared
    sizes = r0["gaussians"]["sizes"]
    assert sizes["1"] < max(sizes.values())  # densification ran, alike on both ranks


@pytest.mark.distributed
def test_two_ranks_reach_the_psnr_of_one_with_the_same_global_batch(two_ranks, tmp_path):
    out, _ = two_ranks
    one = Trainer(tiny_config(max_steps=60, grid_every=8), tmp_path / "one")
    one.train(show_progress=False)
    test = one.cfg.scene.load("test")
    two = load_run(out / "hashgrid")  # the 2-rank checkpoint loads and evaluates in one process
    assert two.step == 60
    psnr_two = evaluate(two.model, test, every=4, show_progress=False)["psnr"]
    psnr_one = evaluate(one.model, test, every=4, show_progress=False)["psnr"]
    assert abs(psnr_two - psnr_one) < 1.0, (psnr_two, psnr_one)
    assert abs(two.grid.occupied_fraction() - one.grid.occupied_fraction()) < 0.05
    lines = [json.loads(x) for x in (out / "hashgrid" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["ranks"] == 2 and lines[-1]["step"] == 60


@pytest.mark.distributed
def test_a_checkpoint_of_two_ranks_resumes_under_one(two_ranks, tmp_path):
    out, _ = two_ranks
    cfg = RunConfig.load(out / "hashgrid" / "config.yaml")
    cfg.train.max_steps = 70
    trainer = Trainer(cfg, out / "hashgrid")
    trainer.resume()
    assert trainer.step == 60
    trainer.train(show_progress=False)
    assert load_run(out / "hashgrid").step == 70


@pytest.mark.distributed
def test_the_run_lock_refuses_a_second_trainer_of_any_rank_count(two_ranks):
    out, _ = two_ranks
    lock = RunLock(out / "hashgrid")  # a trainer writing this run
    try:
        done = subprocess.run([sys.executable, "-m", "fields", "train", "--nproc", "2", "--resume",
                               str(out / "hashgrid")], env=ENV, capture_output=True, text=True, timeout=600)
    finally:
        lock.release()
    assert done.returncode != 0
    assert "another trainer is writing this run folder" in done.stdout + done.stderr


def rank_pid(tag: str, rank: int) -> int | None:
    """The pid of training rank ``rank`` among the processes this test started (tagged in their environment)."""
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"FIELDS_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def start_ranks(argvs: list[list[str]]) -> list[subprocess.Popen]:
    """Rank r runs ``fields train argvs[r]``, started by hand: no torchrun agent to stop the survivors first."""
    port = 29500 + os.getpid() % 1000
    return [subprocess.Popen([sys.executable, "-m", "fields", "train", *argv],
                             env={**ENV, "RANK": str(r), "WORLD_SIZE": str(len(argvs)), "LOCAL_RANK": str(r),
                                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r, argv in enumerate(argvs)]


def wait_for(path: Path, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 600
    while not path.exists():
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "ended before its checkpoint"
        time.sleep(0.2)


def kill_rank_1_under_torchrun(tmp_path: Path, name: str, *launch: str, timeout: float) -> tuple[int, str, Path]:
    """``fields train --nproc 2 *launch`` of 400 steps (checkpoint every 20); once the first checkpoint exists,
    kill -9 training rank 1 and wait for the job: its exit code, output and run folder."""
    tag = uuid.uuid4().hex
    run = tmp_path / "procedural" / "hashgrid" / name
    job = subprocess.Popen([sys.executable, "-m", "fields", "train", "--nproc", "2", *launch, "--run-name", name,
                            "--output-dir", str(tmp_path), "--max-steps", "400", "--ckpt-every", "20", *SMALL],
                           env={**ENV, "FIELDS_TEST_TAG": tag}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    try:
        wait_for(run / "checkpoints" / "step-000020.pt", [job])
        pid = rank_pid(tag, 1)
        assert pid is not None
        os.kill(pid, 9)
        output, _ = job.communicate(timeout=timeout)
    finally:
        if job.poll() is None:
            job.kill()
    return job.returncode, output.replace("  ", " ").replace("  ", " "), run


@pytest.mark.distributed
def test_killing_a_rank_stops_the_job_with_the_checkpoint_intact(tmp_path, procedural_root):
    """Under torchrun the agent names the dead rank and stops the rest (it may stop rank 0 before rank 0's next
    exchange notices, so what rank 0 says is checked without an agent below)."""
    code, output, run = kill_rank_1_under_torchrun(tmp_path, "killed", timeout=120)
    assert code != 0
    assert "exitcode: -9" in output and "local_rank: 1" in output
    assert 20 <= load_run(run).step < 400  # the last good checkpoint is intact


@pytest.mark.distributed
def test_max_restarts_resumes_a_job_whose_rank_was_killed(tmp_path, procedural_root):
    """torchrun restarts the job after a rank is killed; the restarted ranks form a new group (not one that dials
    the dead rank's address) and resume from the last checkpoint."""
    code, output, run = kill_rank_1_under_torchrun(tmp_path, "restarted", "--max-restarts", "1", timeout=600)
    assert code == 0, output[-3000:]
    assert "exitcode: -9" in output and "Resumed" in output
    assert load_run(run).step == 400
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 400  # lines after the checkpoint resumed were dropped


@pytest.mark.distributed
def test_the_survivor_of_a_killed_rank_names_the_failed_exchange(tmp_path, procedural_root):
    run = tmp_path / "procedural" / "hashgrid" / "alone"
    procs = start_ranks([["--run-name", "alone", "--output-dir", str(tmp_path), "--max-steps", "400",
                          "--ckpt-every", "20", *SMALL]] * 2)
    try:
        wait_for(run / "checkpoints" / "step-000020.pt", procs)
        procs[1].kill()
        output, _ = procs[0].communicate(timeout=120)  # bounded: rank 0 sees the lost peer at its next exchange
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 1, output
    assert "rank 0: exchange" in output and "training stopped at step" in output, output
    assert 20 <= load_run(run).step < 400


@pytest.mark.distributed
def test_a_hung_rank_stops_the_job_within_the_collective_timeout(tmp_path, procedural_root):
    """A rank that stops answering (SIGSTOP: alive, silent) ends the job after --collective-timeout, and the
    survivor names it from its heartbeat."""
    run = tmp_path / "procedural" / "hashgrid" / "hung"
    procs = start_ranks([["--run-name", "hung", "--output-dir", str(tmp_path), "--max-steps", "400",
                          "--ckpt-every", "20", "--collective-timeout", "5", *SMALL]] * 2)
    try:
        wait_for(run / "checkpoints" / "step-000020.pt", procs)
        os.kill(procs[1].pid, signal.SIGSTOP)
        tic = time.monotonic()
        output, _ = procs[0].communicate(timeout=120)
        waited = time.monotonic() - tic
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    assert procs[0].returncode == 1, output
    assert waited < 60  # bounded by the timeout (5 s) plus start-up of the report, not by the run's length
    assert "rank 0: exchange" in output and "silent: rank 1" in output, output
    assert 20 <= load_run(run).step < 400


@pytest.mark.distributed
def test_ranks_started_with_different_settings_are_refused(tmp_path, procedural_root):
    procs = start_ranks([[*SMALL, "--max-steps", str(10 + r), "--output-dir", str(tmp_path)] for r in range(2)])
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 2 for p in procs), outputs
    assert all("rank(s) 1 of 2 were started with a different command line" in o for o in outputs), outputs
    assert not (tmp_path / "procedural").exists()  # refused before a run folder was made
