"""Similarity alignment of point sets (camera centres): shared by tests/test_process.py and bench_process.py."""

from __future__ import annotations

import numpy as np


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale s, rotation R [3, 3] and translation t [3] minimising sum |s R src_i + t - dst_i|^2 over the
    point pairs ``src`` [N, 3] -> ``dst`` [N, 3] (Umeyama 1991: least squares, never a reflection)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, d, vt = np.linalg.svd(b.T @ a / len(src))
    e = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ e @ vt
    scale = float(np.trace(np.diag(d) @ e) / a.var(0).sum())
    return scale, rotation, mu_d - scale * rotation @ mu_s


def aligned_errors(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Distances [N] between ``dst`` and ``src`` after the best similarity alignment of ``src`` onto it."""
    scale, rotation, shift = umeyama(src, dst)
    return np.linalg.norm(scale * src @ rotation.T + shift - dst, axis=1)
