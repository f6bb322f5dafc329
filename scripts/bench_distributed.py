"""Data-parallel overheads on this machine, and what they predict for more machines (issue 24).

1. Throughput on lego (``FIELDS_DATA``), per backend, the same global batch: ``fields train`` as one process with
   2 threads against ``fields train --nproc 2`` (two gloo ranks of 1 thread each). On 2 cores this checks the
   overheads, it is not a speed-up. From the ranks' metrics: bytes each rank all-reduces per step and the share of
   the step spent in collectives (waiting for the slower rank included).
2. The hash grid's gradient exchange three ways, under torchrun on loopback: one flat all-reduce of every gradient
   (what ``Distributed.average_gradients`` does), DDP's bucketing (a 1 MB first bucket, then 25 MB buckets, one
   all-reduce each), and only the table rows a real step touched (all-gather of row indices and values).
3. A model for N nodes like this one (2 cores each), global batch split evenly: step time = compute / N + ring
   all-reduce ``2 (N-1)/N x bytes / bandwidth + 2 (N-1) x latency`` (latency 50 us), at 10 and 100 Gbit/s.

Writes the ``distributed`` section of BENCHMARKS.md and docs/bench_distributed.png.

    python scripts/bench_distributed.py                 # hashgrid and gaussians, 150 / 60 steps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, write_section  # noqa: E402

STEPS = {"hashgrid": 150, "gaussians": 60}
NODES = [1, 2, 4, 8, 16]
LINKS = {"10 Gbit/s": 10e9 / 8, "100 Gbit/s": 100e9 / 8}
LATENCY = 50e-6
PLOT = ROOT / "docs" / "bench_distributed.png"


def train(field: str, steps: int, nproc: int, out: Path) -> dict:
    """One ``fields train`` run; its throughput and exchange totals from metrics.jsonl (first window left out:
    it holds start-up and the first grid updates)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "fields", "train", "--field", field, "--max-steps", str(steps), "--max-time",
            "None", "--output-dir", str(out), "--run-name", f"{field}-{nproc}", "--log-every", "10", "--quiet",
            "--ckpt-every", str(10 * steps)]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    run = next(out.glob(f"*/{field}/{field}-{nproc}"))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[0], lines[-1]
    seconds = last["elapsed"] - first["elapsed"]
    rate = [x["samples_per_s"] for x in lines[1:]]
    row = {"field": field, "nproc": nproc, "steps": last["step"] - first["step"], "seconds": seconds,
           "step_s": seconds / max(last["step"] - first["step"], 1), "samples_per_s": sum(rate) / len(rate)}
    if nproc > 1:
        row["mb_per_step"] = last["exchanged_mb"] / last["step"]
        row["exchange_share"] = (last["exchange_s"] - first["exchange_s"]) / max(seconds, 1e-9)
    return row


def touched_fraction() -> tuple[int, float]:
    """The hash table's size (values) and the fraction of its rows with a non-zero gradient after one lego step."""
    from fields.run.config import RunConfig, TrainConfig
    from fields.training.trainer import Trainer

    trainer = Trainer(RunConfig(train=TrainConfig(max_steps=3, max_time=None)), None)
    trainer.train(show_progress=False)
    table = max(trainer.field.parameters(), key=lambda p: p.numel())
    loss, _, _ = trainer.steps.loss(trainer_context(trainer))
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    rows = table.grad.reshape(-1, table.shape[-1])
    return table.numel(), float((rows != 0).any(-1).float().mean())


def trainer_context(trainer):
    from fields.training.steps import StepContext

    return StepContext(trainer.step, trainer.step_generator(), trainer.progress(), trainer.budget_spent())


def collectives(numel: int, touched: float, repeats: int = 20) -> None:
    """Under torchrun: time the three exchanges of a ``numel`` float32 gradient; rank 0 prints JSON."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    grad = torch.randn(numel)
    width = 2  # hash-table features per row
    n_rows = numel // width
    picked = torch.randperm(n_rows)[: int(touched * n_rows)].int()

    def flat():
        dist.all_reduce(grad)

    def ddp_buckets():
        sizes, left, cap = [], numel, 1 << 18  # 1 MB of float32 first, then 25 MB
        while left > 0:
            sizes.append(min(cap, left))
            left -= sizes[-1]
            cap = 25 * (1 << 18)
        for part in grad.split(sizes):
            dist.all_reduce(part)

    def touched_rows():
        idx = [torch.empty_like(picked) for _ in range(dist.get_world_size())]
        vals = [torch.empty(len(picked), width) for _ in range(dist.get_world_size())]
        dist.all_gather(idx, picked)
        dist.all_gather(vals, grad[: len(picked) * width].view(-1, width))
        out = torch.zeros(n_rows, width)
        for i, v in zip(idx, vals):
            out.index_add_(0, i.long(), v)

    result = {}
    for name, fn in (("flat all-reduce (ours)", flat), ("DDP buckets", ddp_buckets),
                     ("touched rows only", touched_rows)):
        fn()
        dist.barrier()
        tic = time.perf_counter()
        for _ in range(repeats):
            fn()
        dist.barrier()
        result[name] = (time.perf_counter() - tic) / repeats
    if dist.get_rank() == 0:
        print("COLLECTIVES " + json.dumps(result), flush=True)
    dist.destroy_process_group()


def predict(step_s: float, samples_per_step: float, mb_per_step: float, nodes: int, link: float) -> float:
    """Samples/s of ``nodes`` machines, each computing 1/nodes of the global batch, then a ring all-reduce."""
    comm = 0.0 if nodes == 1 else 2 * (nodes - 1) / nodes * mb_per_step * 1e6 / link + 2 * (nodes - 1) * LATENCY
    return samples_per_step / (step_s / nodes + comm)


def plot(preds: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (field, link), values in preds.items():
        ax.plot(NODES, [v / values[0] for v in values], marker="o", label=f"{field}, {link}")
    ax.plot(NODES, NODES, color="grey", linestyle=":", label="linear")
    ax.set_xlabel("nodes (2 cores each)")
    ax.set_ylabel("predicted speed-up over one node")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", nargs="+", default=list(STEPS), choices=list(STEPS))
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md and docs/ alone")
    ap.add_argument("--collectives", nargs=2, type=float, metavar=("NUMEL", "TOUCHED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.collectives:
        collectives(int(args.collectives[0]), args.collectives[1])
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for field in args.fields:
            for nproc in (1, 2):
                rows.append(train(field, STEPS[field], nproc, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    numel, touched = touched_fraction()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(Path(__file__).resolve()), "--collectives", str(numel), str(touched)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    line = [x for x in done.stdout.splitlines() if x.startswith("COLLECTIVES ")]
    if done.returncode != 0 or not line:
        raise SystemExit(f"collectives failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    coll = json.loads(line[0].split(" ", 1)[1])
    print(json.dumps({"table_values": numel, "touched_rows": touched, **coll}), flush=True)

    table = ["| field | processes x threads | steps | s/step | samples/s | MB all-reduced per step | share of step in "
             "collectives |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['field']} | {r['nproc']} x {2 // r['nproc']} | {r['steps']} | {r['step_s']:.3f} | "
                     f"{r['samples_per_s']:.3g} | {r.get('mb_per_step', 0):.2f} | "
                     f"{100 * r.get('exchange_share', 0):.0f} % |")
    exch = ["| exchange of the hash grid's gradient (2 ranks, loopback) | ms per step |", "|---|---|"]
    exch += [f"| {k} | {1000 * v:.1f} |" for k, v in coll.items()]
    preds, model = {}, ["| field | link | " + " | ".join(f"{n} node{'s' * (n > 1)}" for n in NODES) + " |",
                        "|---|---|" + "---|" * len(NODES)]
    for field in args.fields:
        one = next(r for r in rows if r["field"] == field and r["nproc"] == 1)
        two = next(r for r in rows if r["field"] == field and r["nproc"] == 2)
        per_step = one["samples_per_s"] * one["step_s"]
        for link, bw in LINKS.items():
            preds[field, link] = [predict(one["step_s"], per_step, two["mb_per_step"], n, bw) for n in NODES]
            model.append(f"| {field} | {link} | " + " | ".join(f"{v:.3g}" for v in preds[field, link]) + " |")
    body = ("Same global batch in every row (lego 200x200). On 2 cores, 2 processes x 1 thread against 1 x 2 checks "
            "the overheads; it is not a speed-up.\n\n" + "\n".join(table) +
            f"\n\nThe hash table holds {numel / 1e6:.2f} M values; one lego step touched {100 * touched:.0f} % of "
            "its rows.\n\n" + "\n".join(exch) +
            "\n\nPredicted samples/s for N nodes like this one (2 cores each; compute per step / N + ring all-reduce "
            "2 (N-1)/N x bytes / bandwidth + 2 (N-1) x 50 us; compute and bytes from the rows above):\n\n" +
            "\n".join(model) + "\n\n![predicted scaling](docs/bench_distributed.png)")
    print(body)
    if not args.no_write:
        plot(preds, PLOT)
        write_section("distributed", "## Data-parallel training (bench_distributed.py)\n\n" + body)


if __name__ == "__main__":
    main()
