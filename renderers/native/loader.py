"""Loader of the native kernels in ``cuda/``.

The extension is JIT-built once with ``torch.utils.cpp_extension`` + ninja (``-O3 -march=native -fopenmp``,
plus the CUDA build when torch has CUDA and nvcc is found) into torch's extension folder
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) under ``fields_native/<hash>``, keyed by the
sources, flags, torch version and the CPU's instruction sets, so later imports load it in milliseconds. While
compiling it prints one line.
If the build fails (no compiler, no ninja...) a single warning says why and every op falls back to its
plain-PyTorch reference; ``FIELDS_NATIVE=0`` forces the reference. Callers ask ``ops_for(tensor)``, which is
``None`` when the reference must be used for that tensor's device.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

SOURCE_DIR = Path(__file__).resolve().parents[2] / "cuda"
# Paths under SOURCE_DIR. The build key hashes every one of them, so an edit to any source or header rebuilds.
CPU_SOURCES = ("bindings.cpp", "cpu/volume.cpp", "cpu/splat.cpp", "cpu/mlp.cpp", "cpu/modulate.cpp", "cpu/sh.cpp",
               "cpu/ssim.cpp", "cpu/denormals.cpp")
CUDA_SOURCES = ("gpu/volume.cu", "gpu/splat.cu", "gpu/sh.cu")
HEADERS = ("common/fields_math.h", "common/kernels.h", "cpu/mlp.h", "gpu/launch.cuh")
# No FMA contraction: the shared math must round exactly like the reference's separate multiply and add.
# -fno-trapping-math lets g++ vectorise loops with float comparisons and selects (the contracted marcher's outer
# points: 4.0 -> 1.8 s CPU marching a 960x540 office_table view); results are unchanged, only floating-point exception
# flags are no longer guaranteed (nothing reads them; no reassociation, every operation rounds as written).
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math", "-std=c++17"]
CUDA_CFLAGS = ["-O3", "--fmad=false", "-std=c++17"]

_lock = threading.Lock()
_state: dict = {}


def enabled() -> bool:
    """False when ``FIELDS_NATIVE=0`` (or ``false``/``off``) asks for the plain-PyTorch reference."""
    return os.environ.get("FIELDS_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


def _want_cuda() -> bool:
    return torch.cuda.is_available() and torch.version.cuda is not None and shutil.which("nvcc") is not None


def build_root() -> Path:
    """The folder that holds the cached builds, one subfolder per source/flag hash."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(base) / "fields_native"


def _build_key(with_cuda: bool) -> str:
    h = hashlib.sha256()
    for name in CPU_SOURCES + HEADERS + (CUDA_SOURCES if with_cuda else ()):
        h.update(name.encode())
        h.update((SOURCE_DIR / name).read_bytes())
    h.update(repr((CFLAGS, CUDA_CFLAGS if with_cuda else None, torch.__version__, sys.version_info[:2])).encode())
    h.update(cpu_signature().encode())
    return h.hexdigest()[:16]


def cpuinfo(*keys: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line starting with one of ``keys`` (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(keys):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_signature() -> str:
    """The CPU's instruction-set flags: ``-march=native`` builds for them, so a cache shared with another machine
    (a network home, a copied image) must not hand an AVX-512 build to an AVX2-only CPU (SIGILL)."""
    flags = cpuinfo("flags", "Features")
    return " ".join(sorted(flags.split())) if flags else f"{platform.machine()} {platform.processor()}"


@functools.cache
def has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively with float32 accumulation: AMX-BF16 tiles (Intel Sapphire
    Rapids and later) or AVX512-BF16 dot products (AMD Zen 4 and later, Intel Cooper Lake). There bfloat16 matrix
    products run 1.5-2.5x faster than float32 ones: torch's through oneDNN, the fused MLP's through its own kernels."""
    flags = cpu_signature().split()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _build():
    """Compile (or load the cached build of) the extension; returns ``torch.ops.fields``."""
    from torch.utils import cpp_extension

    with_cuda = _want_cuda()
    key = _build_key(with_cuda)
    name = f"fields_native_{key}"
    build_dir = build_root() / key
    build_dir.mkdir(parents=True, exist_ok=True)
    if not (build_dir / f"{name}.so").exists():
        print(f"fields: compiling native kernels{' (CPU + CUDA)' if with_cuda else ''} into {build_dir} "
              "(once, about a minute)...", file=sys.stderr, flush=True)
    sources = [str(SOURCE_DIR / s) for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]
    cflags = CFLAGS + (["-DFIELDS_WITH_CUDA"] if with_cuda else [])
    cpp_extension.load(name=name, sources=sources, extra_cflags=cflags, extra_cuda_cflags=CUDA_CFLAGS,
                       extra_ldflags=["-fopenmp"], extra_include_paths=[str(SOURCE_DIR)],
                       build_directory=str(build_dir), is_python_module=False, verbose=False)
    return torch.ops.fields


def native_ops():
    """``torch.ops.fields`` when the native build is enabled and loads, else ``None`` (after one warning)."""
    if not enabled():
        return None
    with _lock:
        if "ops" not in _state:
            try:
                _state["ops"] = _build()
            except Exception as e:  # noqa: BLE001 - any build failure means: use the reference
                _state["ops"] = None
                reason = build_error_line(str(e)) or type(e).__name__
                warnings.warn(f"fields: native kernels unavailable, using the slower PyTorch reference ({reason})",
                              RuntimeWarning, stacklevel=2)
        return _state["ops"]


def build_error_line(message: str) -> str:
    """The line of a failed build's output that says what went wrong: the compiler's first ``error:``
    diagnostic where there is one (torch's message starts with "Error building extension" and then holds the
    whole ninja log), else the last line."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return next((ln for ln in lines if "error:" in ln.lower()), lines[-1] if lines else "")


@contextlib.contextmanager
def flushed_denormals() -> Iterator[None]:
    """Within the block, treat denormal floats as zero on the CPU: on the calling thread and, where the native
    build loads, on every thread of the OpenMP pool (``torch.set_flush_denormal`` sets only the calling thread).
    Training runs in it: late in a run, gradients and optimizer moments decaying into denormals (~100x slower
    arithmetic on x86) made lego hash-grid steps 2x slower after about a minute. The previous mode comes back
    afterwards, since it is process-wide state other code may rely on (hypothesis refuses to run under it)."""
    ops = native_ops()
    was = bool(ops.flush_denormals(True)) if ops is not None else False
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was)
        if ops is not None:
            ops.flush_denormals(was)


def ops_for(*tensors: torch.Tensor):
    """The native ops if they can run on these tensors (float32, CPU or a CUDA build on CUDA), else ``None``."""
    ops = native_ops()
    if ops is None:
        return None
    for t in tensors:
        if t.dtype != torch.float32:
            return None
        if t.is_cuda and not ops.has_cuda():
            return None
        if not (t.is_cuda or t.device.type == "cpu"):
            return None
    return ops
