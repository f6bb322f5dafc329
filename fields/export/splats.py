"""The standard 3DGS PLY file (as written and read by the INRIA code and every splat viewer).

One binary little-endian ``vertex`` element with float properties ``x y z nx ny nz f_dc_0..2 f_rest_* opacity
scale_0..2 rot_0..3``: means, zero normals, SH DC, the other SH coefficients channel by channel (all of red,
then green, then blue), logit opacity, log-scales and the wxyz quaternion. The SH degree follows from the
number of ``f_rest_*`` properties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class PlyError(ValueError):
    """A file that is not a 3DGS PLY; the message names the file and the problem."""


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


def read_splats(path: Path) -> dict[str, torch.Tensor]:
    """Read a 3DGS PLY back into the tensors ``write_splats`` takes; PlyError if it is not one."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PlyError(f"{path}: cannot read ({e.strerror or e})") from None
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise PlyError(f"{path}: not a PLY file")
    lines = raw[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise PlyError(f"{path}: only binary little-endian 3DGS PLY files are supported")
    counts = [int(line.split()[2]) for line in lines if line.startswith("element vertex")]
    props = [line.split() for line in lines if line.startswith("property")]
    if not counts or any(p[1] != "float" for p in props):
        raise PlyError(f"{path}: expected one 'vertex' element of float properties (a 3DGS PLY)")
    names = [p[2] for p in props]
    n_rest = sum(name.startswith("f_rest_") for name in names)
    if n_rest % 3 or names != property_names(n_rest // 3):
        raise PlyError(f"{path}: properties are not those of a 3DGS PLY (x y z nx ny nz f_dc_* f_rest_* opacity "
                       "scale_* rot_*)")
    n = counts[0]
    body = raw[end + len(b"end_header\n"):]
    if len(body) < n * len(names) * 4:
        raise PlyError(f"{path}: truncated ({len(body)} bytes of data for {n} Gaussians)")
    data = torch.from_numpy(np.frombuffer(body, "<f4", n * len(names)).reshape(n, len(names)).astype(np.float32))
    k = n_rest // 3
    col = {name: i for i, name in enumerate(names)}
    return {"means": data[:, 0:3], "sh0": data[:, 6:9].reshape(n, 1, 3),
            "shN": data[:, 9:9 + 3 * k].reshape(n, 3, k).transpose(1, 2).contiguous(),
            "opacities": data[:, col["opacity"]], "scales": data[:, col["scale_0"]:col["scale_0"] + 3],
            "quats": data[:, col["rot_0"]:col["rot_0"] + 4]}
