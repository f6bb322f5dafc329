"""Fault injection shared by the hardening tests and ``scripts/bench_reliability.py``: kill -9 loops over a
training run, and checkpoint corruption (cut or flipped bytes)."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class KillReport:
    """What a kill loop saw: kills tried and survived (every checkpoint loads, at most one checkpoint interval
    lost), kills that landed inside a checkpoint write, the most steps lost, and the final resumed step."""

    tried: int = 0
    survived: int = 0
    during_write: int = 0
    max_lost: int = 0
    final_step: int | None = None
    problems: list[str] = field(default_factory=list)


class _Worker:
    """``tests/train_worker.py`` as a subprocess with a line reader that can time out."""

    def __init__(self, run_dir: Path):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "train_worker.py"), str(run_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(ln.strip()) for ln in self.proc.stdout], daemon=True).start()

    def expect(self, *prefixes: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line.startswith(prefixes):
                return line
            if line.startswith("error"):
                raise AssertionError(f"training child failed: {line}")
        raise AssertionError(f"worker said none of {prefixes} within {timeout} s")

    def send(self, request: str) -> int:
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return int(self.expect("pid").split()[1])

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def last_logged_step(run_dir: Path) -> int:
    """The step of the last complete line of metrics.jsonl (0 if none)."""
    step = 0
    path = run_dir / "metrics.jsonl"
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            pass
    return step


def kill_loop(run_dir: Path, kills: int = 10, ckpt_every: int = 2, max_delay: float = 1.5, seed: int = 0,
              log=lambda _: None) -> KillReport:
    """Train the procedural scene in ``run_dir`` and kill -9 it ``kills`` times (every third kill inside a
    checkpoint write, the others after a random delay), resuming each time with ``fields train --resume``; then
    let one resume finish two more steps. Checks after every kill that each checkpoint on disk loads and that
    at most ``ckpt_every`` logged steps are lost."""
    from conftest import tiny_config
    from fields.run.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
    from fields.run.config import RunConfig

    rng = random.Random(seed)
    cfg = tiny_config(max_steps=1_000_000, ckpt_every=ckpt_every)
    cfg.train.log_every, cfg.train.grid_warmup = 1, 1
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    report = KillReport()
    worker = _Worker(run_dir)
    try:
        worker.expect("ready", timeout=300)
        for k in range(kills):
            midwrite = k % 3 == 1
            pid = worker.send("midwrite" if midwrite else "train")
            seen = worker.expect("midwrite" if midwrite else "started", "exit")
            if seen.startswith("exit"):
                report.problems.append(f"kill {k}: the child ended by itself ({seen})")
                continue
            if not midwrite:
                time.sleep(rng.uniform(0, max_delay))
            os.kill(pid, signal.SIGKILL)
            worker.expect("exit")
            report.tried += 1
            report.during_write += midwrite
            before = len(report.problems)
            ckpts = list_checkpoints(run_dir)
            for path in ckpts:
                try:
                    load_checkpoint(path)
                except CheckpointError as e:
                    report.problems.append(f"kill {k}: {e}")
            newest = int(ckpts[0].name[5:11]) if ckpts else 0
            lost = last_logged_step(run_dir) - newest
            report.max_lost = max(report.max_lost, lost)
            if lost > ckpt_every:
                report.problems.append(f"kill {k}: {lost} logged steps after the newest checkpoint (step {newest})")
            report.survived += len(report.problems) == before
            log(f"kill {k} ({'in a checkpoint write' if midwrite else 'random'}): newest checkpoint step {newest}, "
                f"{lost} steps lost")
        ckpts = list_checkpoints(run_dir)
        target = (int(ckpts[0].name[5:11]) if ckpts else 0) + 2
        cfg = RunConfig.load(run_dir / "config.yaml")
        cfg.train.max_steps = target
        cfg.save(run_dir / "config.yaml")
        worker.send("train")
        code = worker.expect("exit", timeout=300)
        if code != "exit 0":
            report.problems.append(f"the final resume ended with {code}")
        from fields.run.folder import load_run

        report.final_step = load_run(run_dir).step
        if report.final_step != target:
            report.problems.append(f"the final resume stopped at step {report.final_step}, not {target}")
    finally:
        worker.close()
    return report


def truncate(path: Path, rng: random.Random) -> None:
    """Cut the file at a random length (keeping at least one byte less than it had)."""
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(len(data))])


def flip_byte(path: Path, rng: random.Random) -> int:
    """Flip one random bit of one random byte; returns its offset."""
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return i


class CreatesFile:
    """A pickle payload that creates a file when unpickled (``open(path, 'w')``)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")
