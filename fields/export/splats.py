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
