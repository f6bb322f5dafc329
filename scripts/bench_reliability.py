"""Robustness figures for RELIABILITY.md: kill -9 during training, corrupted checkpoints, fuzzed loaders, and
viewer clients held while bad clients misbehave.

    python scripts/bench_reliability.py [--kills 10] [--corruptions 100] [--fuzz-examples 200] [--clients 10]

It counts outcomes, not speed, so a busy machine only makes it slower. The fault injection is the tests' own
(``scripts/faults.py``, ``tests/test_bad_input.py``).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from benchlib import write_section  # noqa: E402

RELIABILITY = ROOT / "RELIABILITY.md"
HEADER = ("# Reliability\n\nFaults injected on purpose and what survived them; the section below is rewritten by "
          "`scripts/bench_reliability.py`. The tests in `tests/test_faults.py`, `tests/test_bad_input.py`, "
          "`tests/test_memory.py`, `tests/test_viewer_faults.py` and `tests/test_exposure.py` assert the same "
          "behaviour with smaller counts.\n")


def kills(work: Path, n: int) -> tuple[list[str], Path]:
    from faults import kill_loop

    run = work / "killed"
    report = kill_loop(run, kills=n, ckpt_every=2, max_delay=1.0, seed=7, log=print)
    for p in report.problems:
        print("problem:", p)
    row = (f"| kill -9 during training (every 3rd inside a checkpoint write), then `--resume` | {report.survived} / "
           f"{report.tried} survived | {report.during_write} kills inside a write; at most {report.max_lost} steps "
           f"lost (checkpoint every 2); final resume reached step {report.final_step} |")
    return [row], run


def corruptions(run: Path, n: int) -> list[str]:
    import torch

    from faults import flip_byte, truncate
    from faults import CreatesFile
    from fields.run.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, state_digest

    rng = random.Random(0)
    good = list_checkpoints(run)[0]
    digest = state_digest(load_checkpoint(good))
    bad = run / "corrupt.pt"
    cut_detected = flip_detected = unchanged = silent = 0
    for _ in range(n):
        shutil.copy(good, bad)
        truncate(bad, rng)
        try:
            load_checkpoint(bad)
        except CheckpointError:
            cut_detected += 1
    for _ in range(n):
        shutil.copy(good, bad)
        flip_byte(bad, rng)
        try:
            state = load_checkpoint(bad)
        except CheckpointError:
            flip_detected += 1
        else:
            if state_digest(state) == digest:
                unchanged += 1
            else:
                silent += 1

    torch.save({"step": 1, "field": CreatesFile(run / "pwned")}, bad)
    try:
        load_checkpoint(bad)
        pickle = "loaded (!)"
    except CheckpointError:
        pickle = "refused"
    pickle += ", file not created" if not (run / "pwned").exists() else ", FILE CREATED"
    bad.unlink()
    return [f"| checkpoint cut at a random length | {cut_detected} / {n} detected | |",
            f"| one random bit flipped in a checkpoint | {flip_detected} / {n} detected | {unchanged} flips hit "
            f"bytes the contents do not depend on (zip padding/metadata; loads identical); {silent} changed "
            "contents loaded undetected |",
            f"| crafted pickle (creates a file when unpickled) as a checkpoint | {pickle} | `weights_only=True` |"]


def fuzz(examples: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FIELDS_FUZZ_EXAMPLES": str(examples)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_bad_input.py",
                          "-k", "fuzzed", "--hypothesis-show-statistics", "-p", "no:warnings"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    text = out.stdout + out.stderr
    rows = []
    for block in text.split("tests/test_bad_input.py::")[1:]:  # one block of statistics per fuzz test
        name = block.split(":", 1)[0]
        counts = re.findall(r"(\d+) passing examples, (\d+) failing examples", block)
        passing, failing = sum(int(p) for p, _ in counts), sum(int(f) for _, f in counts)
        rows.append(f"| fuzz `{name}` (hypothesis) | {passing + failing} cases, {failing} tracebacks | "
                    "each case loads or raises the loader's one-line error naming the file |")
    # Through the command line: bad scenes and camera paths must print one line and exit 2.
    from test_bad_input import png_header
    from conftest import write_blender

    work = Path(tempfile.mkdtemp(prefix="fields-cli-"))
    cases = []
    root = write_blender(work / "bomb", n=2, size=4)
    (root / "train" / "r_1.png").write_bytes(png_header(100_000, 100_000))
    cases.append(["train", "--data", str(root), "--quiet"])
    root = write_blender(work / "escape", n=2, size=4)
    meta = (root / "transforms_train.json").read_text().replace("./train/r_1", "../../../../etc/passwd")
    (root / "transforms_train.json").write_text(meta)
    cases.append(["train", "--data", str(root), "--quiet"])
    (work / "bad.json").write_text('{"camera_path": [{"camera_to_world": [1e999], "fov": 50}]}')
    cases.append(["export", "video", str(work), "--path", str(work / "bad.json")])
    cases.append(["export", "mesh", str(work), "--resolution", "100000"])
    cases.append(["eval", str(work / "missing")])
    tracebacks = one_line = 0
    for args in cases:
        res = subprocess.run([sys.executable, "-m", "fields.cli", *args], cwd=ROOT, env=env, capture_output=True,
                             text=True)
        tracebacks += "Traceback" in res.stdout + res.stderr
        one_line += res.returncode == 2 and len([ln for ln in res.stdout.splitlines() if ln.strip()]) == 1
    shutil.rmtree(work, ignore_errors=True)
    rows.append(f"| bad input through `fields` (bomb image, path out of the folder, bad camera path, huge mesh, "
                f"missing run) | {one_line} / {len(cases)} one-line errors with exit 2 | {tracebacks} tracebacks |")
    return rows


def viewer_clients(run: Path, n: int) -> list[str]:
    from rich.console import Console

    from fields.run.folder import load_run
    from test_viewer import free_port
    from ws_client import send_nan_camera
    from fields.cli import run_viewer
    from ws_client import ViserTab

    loaded = load_run(run)
    cams = loaded.split("train").cameras
    viewer = run_viewer(loaded, port=free_port(), max_side=32, console=Console(file=io.StringIO()))
    tabs = []
    try:
        tabs = [ViserTab(viewer.url, 64, 64) for _ in range(n)]
        for i, tab in enumerate(tabs):
            tab.send_camera(cams.c2w[i % len(cams)].numpy())
        bad = ViserTab(viewer.url, 64, 64)
        send_nan_camera(bad)
        gone = ViserTab(viewer.url, 64, 64)
        gone.send_camera(cams.c2w[0].numpy())
        gone.close()
        served = sum(tab.next_image(120) is not None for tab in tabs)
        bad.send_camera(cams.c2w[1].numpy())
        bad_recovers = bad.next_image(120) is not None
        tabs.append(bad)
    finally:
        for tab in tabs:
            tab.close()
        viewer.close()
    return [f"| viewer tabs at once, plus one sending NaN/0-size cameras and one leaving mid-render | {served} / {n} "
            f"served | NaN tab {'served again' if bad_recovers else 'NOT served'} after a proper camera |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--corruptions", type=int, default=100)
    parser.add_argument("--fuzz-examples", type=int, default=200)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("FIELDS_CACHE", str(Path.home() / ".cache" / "fields"))
    work = Path(tempfile.mkdtemp(prefix="fields-reliability-"))
    try:
        rows, run = kills(work, args.kills)
        rows += corruptions(run, args.corruptions)
        rows += fuzz(args.fuzz_examples)
        rows += viewer_clients(run, args.clients)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = "\n".join(["| Fault injected | Outcome | Notes |", "|---|---|---|", *rows])
    print(body)
    if not RELIABILITY.exists():
        RELIABILITY.write_text(HEADER)
    write_section("reliability", body, RELIABILITY)


if __name__ == "__main__":
    main()
