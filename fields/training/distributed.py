"""Data-parallel training on ``torch.distributed``: the pieces the training loop needs when torchrun starts it.

torchrun (``python -m torch.distributed.run``) starts one process per rank with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous in the environment; ``Distributed.start`` joins the process group (gloo on the
CPU, NCCL on CUDA, chosen by the training device) with a bounded collective timeout. Each step every rank draws
its own share of the batch from its own random stream (``draws``; ``StepContext.share``), the losses, metrics and step times
are summed (``combine``: every rank logs, schedules and stops alike), and gradients are averaged with one flat
all-reduce per step (``average_gradients``; ``scripts/bench_distributed.py`` times it against DDP's bucketing
and against exchanging only the table rows a step touched; a flat exchange also needs no ``forward`` through a
wrapper, which our renderers do not call). Each exchange's time and bytes are counted (``totals``, in the
metrics). Identical gradients and identical shared draws give identical weights and occupancy grids on every
rank; Gaussians sum their densification statistics over ranks (``sum_``) so that every rank clones, splits and
prunes alike. Rank 0 alone writes the run folder; a failed exchange raises ``RankFailure``
naming the ranks that went silent (a heartbeat in the rendezvous store).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from fields.run.config import ConfigError, SettingError


@dataclass
class DistConfig:
    """Data-parallel launch options (not recorded in config.yaml: a run resumes under any number of ranks)."""

    nproc: int = 1
    """Processes to train with on this machine: `fields train --nproc 2` runs `torchrun --standalone
    --nproc-per-node 2 -m fields train ...` (the global batch and schedule stay those of one process)."""
    max_restarts: int = 0
    """With --nproc: how often torchrun restarts the job after a rank fails; it resumes from the newest checkpoint."""
    run_name: str | None = None
    """Name of the run folder under <output-dir>/<scene>/<field>/ (default: a timestamp; under torchrun, from its run
    id, so that a restarted job finds its folder). A run of that name that has a checkpoint is resumed."""
    collective_timeout: float = 120.0
    """Seconds a rank waits for the others in one exchange before the job stops, naming the silent rank."""

    def validate(self) -> None:
        """SettingError for a count or timeout that makes no sense."""
        if not (isinstance(self.nproc, int) and self.nproc >= 1):
            raise SettingError("nproc", self.nproc, "a whole number, at least 1")
        if not (isinstance(self.max_restarts, int) and self.max_restarts >= 0):
            raise SettingError("max_restarts", self.max_restarts, "a whole number, at least 0")
        if not self.collective_timeout > 0:
            raise SettingError("collective_timeout", self.collective_timeout, "a number above 0")
        if self.run_name is not None and (not self.run_name or "/" in self.run_name or self.run_name in (".", "..")):
            raise SettingError("run_name", self.run_name, "a folder name (no '/')")


class RankFailure(RuntimeError):
    """Another rank died or hung: an exchange failed or timed out. The message names the silent ranks."""


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_name() -> str:
    """A run-folder name that a restarted torchrun job finds again: torchrun's run id where it has one
    (``--rdzv-id``, ``--standalone``), else rank 0's launcher process, which outlives its restarts."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"torchrun-{run_id}"
    return f"torchrun-{socket.gethostname()}-{os.getppid()}"


def restarted() -> bool:
    """Whether torchrun restarted this job after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def torchrun_command(argv: list[str], cfg: DistConfig, run_name: str) -> list[str]:
    """The torchrun command line that `fields train --nproc N` runs: N ranks of ``python -m fields`` with the same
    arguments, on a free local port, all writing the run folder ``run_name``."""
    import sys

    args, skip = [], False
    for a in argv:  # launch options stay with the launcher (torchrun's parser would take them as its own)
        if not skip and a.split("=")[0] not in ("--nproc", "--max-restarts"):
            args.append(a)
        skip = a in ("--nproc", "--max-restarts")
    args += [] if cfg.run_name else ["--run-name", run_name]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(cfg.nproc),
            "--max-restarts", str(cfg.max_restarts), "-m", "fields", *args]


def digest(*parts: Any) -> str:
    """A short hash of values (their repr) and tensors (their bytes), to compare what ranks were started with."""
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().cpu().contiguous()
            h.update(f"{t.dtype}{list(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()


class Distributed:
    """This process's place in a data-parallel job and the exchanges of a training step."""

    def __init__(self, rank: int, world: int, local_rank: int, timeout: float):
        self.rank, self.world, self.local_rank, self.timeout = rank, world, local_rank, timeout
        self.step = 0
        self.exchange_seconds = 0.0  # wall time spent in collectives (waiting for slower ranks included)
        self.exchanged_bytes = 0  # payload of the all-reduces (what each rank contributes)

    @classmethod
    def start(cls, cfg: DistConfig, device: str) -> "Distributed":
        """Join torchrun's process group: NCCL where ``device`` is a GPU (one per local rank), gloo on the CPU."""
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if gpu:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            # torchrun's agent keeps one store across restarts: the group of a restarted job must not find its
            # predecessor's addresses there (gloo then dials a dead rank), so each attempt gets its own prefix.
            timeout = datetime.timedelta(seconds=cfg.collective_timeout)
            store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group("nccl" if gpu else "gloo", store=dist.PrefixStore(f"fields/attempt{attempt}", store),
                                    rank=rank, world_size=world, timeout=timeout)
        return cls(rank, world, local_rank, cfg.collective_timeout)

    def close(self) -> None:
        """Leave the group once every rank has got here: a rank that tears down its gloo pairs while a peer is
        still talking to it can die with SIGABRT ("terminate called without an active exception"); seen once in
        the two-rank tests. Callers reach close() on every rank (after training, or a refusal all ranks share)."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def totals(self) -> dict:
        """For the metrics: ranks, and the seconds and megabytes of this rank's exchanges so far."""
        return {"ranks": self.world, "exchange_s": round(self.exchange_seconds, 3),
                "exchanged_mb": round(self.exchanged_bytes / 1e6, 3)}

    # -- random draws ----------------------------------------------------------------------------------------
    def draws(self, seed: int, step: int) -> torch.Generator:
        """This rank's own random stream for step ``step`` (a resumed job draws the same on each rank)."""
        key = hashlib.blake2b(f"{seed},{step},{self.rank}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(key, "little") & (2**63 - 1))

    # -- exchanges -------------------------------------------------------------------------------------------
    def _run(self, what: str, fn, nbytes: int = 0):
        tic = time.perf_counter()
        try:
            out = fn()
            self.exchange_seconds += time.perf_counter() - tic
            self.exchanged_bytes += nbytes
            return out
        except (RuntimeError, dist.DistError) as e:
            if isinstance(e, RankFailure):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise RankFailure(f"rank {self.rank}: exchange '{what}' with the other ranks failed at step "
                              f"{self.step} ({first}){self.silent_ranks()}") from None

    def sum_(self, *tensors: torch.Tensor, what: str = "sum") -> None:
        """Sum each tensor over ranks, in place."""
        for t in tensors:
            self._run(what, lambda: dist.all_reduce(t), t.numel() * t.element_size())

    def combine(self, loss: float, metrics: dict) -> tuple[float, dict]:
        """The step's mean loss and ``mse`` over ranks and its total ``samples`` (so that every rank steps, adapts
        its batch and logs on the same figures; a NaN on one rank stops them all)."""
        keys = [k for k in ("mse",) if k in metrics]
        v = torch.tensor([loss, float(metrics["samples"]), *[float(metrics[k]) for k in keys]], dtype=torch.float64)
        self.sum_(v, what="metrics")
        out = {**metrics, "samples": int(v[1]), **{k: float(v[2 + i]) / self.world for i, k in enumerate(keys)}}
        return float(v[0]) / self.world, out

    def mean(self, value: float, what: str) -> float:
        """The mean of ``value`` over ranks (e.g. a step's time: every rank's budget clock runs alike)."""
        v = torch.tensor([value], dtype=torch.float64)
        self.sum_(v, what=what)
        return float(v[0]) / self.world

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Replace each parameter's gradient by its mean over ranks in one flat all-reduce per dtype (a rank
        without a gradient for it contributes zeros; one that no rank has stays None)."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for ps in by_dtype.values():
            grads = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in ps]
            has = torch.tensor([p.grad is not None for p in ps], dtype=ps[0].dtype, device=ps[0].device)
            flat = torch.cat([*grads, has])
            self._run("gradients", lambda: dist.all_reduce(flat), flat.numel() * flat.element_size())
            grad_part = flat[: flat.numel() - len(ps)].div_(self.world)
            counts = flat[flat.numel() - len(ps):]
            for p, g, n in zip(ps, grad_part.split([p.numel() for p in ps]), counts.tolist()):
                p.grad = g.view_as(p) if n > 0 else None

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for start-up state, not per step)."""
        box = [obj if self.rank == 0 else None]
        self._run(what, lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def require_same(self, what: str, value: str) -> None:
        """Refuse to start when ranks were given different ``what`` (``value``: a digest of it)."""
        values = [None] * self.world
        self._run(what, lambda: dist.all_gather_object(values, value))
        odd = [r for r, v in enumerate(values) if v != values[0]]
        if odd:
            raise ConfigError(f"rank(s) {', '.join(map(str, odd))} of {self.world} were started with a different {what} "
                              "than rank 0; start every rank with the same command line and data")

    # -- liveness --------------------------------------------------------------------------------------------
    def beat(self, step: int) -> None:
        """Record in the rendezvous store that this rank reached ``step`` (read when an exchange fails)."""
        self.step = step
        store = self._store()
        if store is not None:
            try:
                store.set(f"fields/beat/{self.rank}", f"{step} {time.time():.3f}")
            except RuntimeError:  # the store went with a failed job; the exchange reports it
                pass

    @staticmethod
    def _store():
        try:
            return dist.distributed_c10d._get_default_store()
        except (RuntimeError, ValueError, AttributeError):
            return None

    def silent_ranks(self) -> str:
        """'; silent: rank 1 (last at step 40, 31 s ago)' for ranks whose heartbeat is older than half the timeout
        or older than this rank's step; '' when the store cannot tell."""
        store, now, silent = self._store(), time.time(), []
        if store is None:
            return ""
        for r in range(self.world):
            if r == self.rank:
                continue
            try:
                if not store.check([f"fields/beat/{r}"]):
                    silent.append(f"rank {r} (never reached training)")
                    continue
                step, at = store.get(f"fields/beat/{r}").decode().split()
            except (RuntimeError, ValueError):
                return ""
            if now - float(at) > self.timeout / 2 or int(step) < self.step:
                silent.append(f"rank {r} (last at step {step}, {now - float(at):.0f} s ago)")
        return f"; silent: {', '.join(silent)}" if silent else "; the other ranks' launcher names the one that failed"


def data_digest(data: Any) -> str:
    """A digest of a training split (images, cameras), to refuse ranks that load different data."""
    cams, masks = data.cameras, data.masks
    return digest(data.images.pixels, cams.c2w, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height,
                  cams.distortion, None if masks is None else masks.pixels)


def run_exists(run: Path) -> bool:
    """Whether ``run`` holds a run that can be resumed (config.yaml and a checkpoint)."""
    return (run / "config.yaml").is_file() and any((run / "checkpoints").glob("step-*.pt"))
