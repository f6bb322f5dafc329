"""Shared by the benchmark scripts: machine description, timing, native/reference switching and updating one
section of BENCHMARKS.md."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from renderers.native import cpu_signature, cpuinfo

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"


def machine() -> str:
    cpu = cpuinfo("model name") or platform.processor() or platform.machine()
    flags = set(cpu_signature().split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    # the MLPs of every backend then run in bfloat16 (fields.backends.base.bf16_enabled)
    isa += " + AMX-BF16" if "amx_bf16" in flags else " + AVX512-BF16" if "avx512_bf16" in flags else ""
    return f"{cpu} ({isa}), {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).resolve().relative_to(ROOT).as_posix()
                                            if Path(sys.argv[0]).resolve().is_relative_to(ROOT) else sys.argv[0],
                                            *sys.argv[1:]])


def write_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the section between ``<!-- bench:name -->`` and ``<!-- /bench:name -->``."""
    stamp = time.strftime("%Y-%m-%d %H:%M")
    block = (f"<!-- bench:{name} -->\n{body.rstrip()}\n\n"
             f"Command: `python {command()}` on {machine()}, {stamp}.\n<!-- /bench:{name} -->")
    text = path.read_text() if path.exists() else "# Benchmarks\n\nLatest figures; each section is rewritten by " \
        "the script named in it.\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


@contextlib.contextmanager
def path_mode(use_native: bool):
    """Run the block on the native kernels or on the reference (FIELDS_NATIVE is read at every call)."""
    old = os.environ.get("FIELDS_NATIVE")
    os.environ["FIELDS_NATIVE"] = "1" if use_native else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FIELDS_NATIVE", None)
        else:
            os.environ["FIELDS_NATIVE"] = old


def timed(fn, repeats: int, warmup: bool = True, device: str = "cpu") -> float:
    """Median wall time of ``fn()`` in seconds (after one untimed call unless ``warmup`` is false). On a CUDA
    ``device`` each call is timed between synchronisations, so it counts the kernels it queued."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        sync()
        tic = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)
