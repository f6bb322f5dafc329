"""The standard 3DGS PLY file (as written and read by the INRIA code and every splat viewer), and the ``.splat``
file of web viewers (antimatter15's format, read by most browser splat viewers).

One binary little-endian ``vertex`` element with float properties ``x y z nx ny nz f_dc_0..2 f_rest_* opacity
scale_0..2 rot_0..3``: means, zero normals, SH DC, the other SH coefficients channel by channel (all of red,
then green, then blue), logit opacity, log-scales and the wxyz quaternion. The SH degree follows from the
number of ``f_rest_*`` properties.

A ``.splat`` file is headerless: 32 bytes per Gaussian, position f32 x3, linear scale f32 x3, RGBA u8 x4 (the SH
DC colour ``0.5 + SH_C0 f_dc`` and the opacity, times 255) and the normalised wxyz rotation as u8 x4
(``q * 128 + 128``), little-endian, largest first by ``exp(sum of log-scales) * opacity`` (so a viewer that
streams the file draws the big splats first). View-dependent colour (higher SH) does not survive it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fields.backends.gaussians.field import SH_C0

SPLAT_RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
"""One Gaussian of a ``.splat`` file (32 bytes)."""


def property_names(n_rest: int) -> list[str]:
    """Property names in file order for ``n_rest`` higher SH coefficients per channel."""
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_splats(path: Path, g: dict[str, torch.Tensor]) -> None:
    """Write Gaussians given as ``means [N,3] scales [N,3] (log) quats [N,4] opacities [N] (logit) sh0 [N,1,3]
    shN [N,K,3]`` to ``path``."""
    n, n_rest = g["means"].shape[0], g["shN"].shape[1]
    cols = [g["means"], torch.zeros(n, 3), g["sh0"].reshape(n, 3), g["shN"].transpose(1, 2).reshape(n, 3 * n_rest),
            g["opacities"].reshape(n, 1), g["scales"], g["quats"]]
    data = torch.cat([c.detach().float().cpu() for c in cols], 1).numpy().astype("<f4")
    names = property_names(n_rest)
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}",
                        *[f"property float {p}" for p in names], "end_header"]) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.ascontiguousarray(data).tobytes())


def splat_records(g: dict[str, torch.Tensor]) -> np.ndarray:
    """Gaussians (as ``write_splats`` takes them) as ``.splat`` records [N] (``SPLAT_RECORD``), largest first."""
    t = {name: g[name].detach().float().cpu() for name in ("means", "scales", "quats", "opacities", "sh0")}
    n = len(t["means"])
    opacity = torch.sigmoid(t["opacities"].reshape(n))
    order = torch.argsort(-(t["scales"].sum(-1).exp() * opacity), stable=True)
    rgb = 0.5 + SH_C0 * t["sh0"].reshape(n, 3)
    rgba = (torch.cat([rgb, opacity[:, None]], 1) * 255).clamp(0, 255)
    rot = torch.nn.functional.normalize(t["quats"], dim=-1) * 128 + 128
    out = np.zeros(n, SPLAT_RECORD)
    out["position"], out["scale"] = t["means"][order].numpy(), t["scales"][order].exp().numpy()
    out["rgba"], out["rotation"] = rgba[order].numpy().astype(np.uint8), rot[order].clamp(0, 255).numpy().astype(np.uint8)
    return out


def write_dot_splat(path: Path, g: dict[str, torch.Tensor]) -> None:
    """Write Gaussians (as ``write_splats`` takes them) to the ``.splat`` file ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(splat_records(g).tobytes())


def read_dot_splat(path: Path) -> np.ndarray:
    """The records [N] (``SPLAT_RECORD``) of the ``.splat`` file ``path``; a size that is not a whole number of
    32-byte records is an error naming the file."""
    data = Path(path).read_bytes()
    if len(data) % SPLAT_RECORD.itemsize:
        raise ValueError(f"{path}: {len(data)} bytes is not a whole number of {SPLAT_RECORD.itemsize}-byte .splat "
                         "records")
    return np.frombuffer(data, SPLAT_RECORD)
