"""How much memory is free, so that requests too large for it fail at once with advice instead of swapping
or being killed by the kernel (Linux overcommits: a huge allocation "succeeds" and dies when touched)."""

from __future__ import annotations

import os
from pathlib import Path


def available_bytes() -> int:
    """Memory available to new allocations: MemAvailable from /proc/meminfo, else free physical pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62  # unknown: do not refuse anything


def gigabytes(n: float) -> str:
    return f"{n / 2**30:.1f} GB"
