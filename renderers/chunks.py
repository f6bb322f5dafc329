"""Work in chunks of rows that shrink when memory runs out, instead of failing the whole request.

A chunk whose allocation fails (``MemoryError``, or torch's ``RuntimeError`` "not enough memory") is retried in
halves down to ``min_chunk`` rows; below that the error goes up to the caller, who can give advice.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def is_out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and ("out of memory" in text
                                                                           or "not enough memory" in text))


def map_chunks(fn: Callable[..., T], tensors: tuple[torch.Tensor, ...], chunk: int, min_chunk: int = 256) -> list[T]:
    """``fn`` over consecutive row slices of ``tensors`` (equal length), at most ``chunk`` rows at a time."""
    n, start, out = tensors[0].shape[0], 0, []
    while start < n:
        size = min(chunk, n - start)
        try:
            out.append(fn(*(t[start:start + size] for t in tensors)))
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e) or size <= min_chunk:
                raise
            chunk = max(min_chunk, size // 2)
            continue
        start += size
    return out
