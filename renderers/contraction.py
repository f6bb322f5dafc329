"""Scene contraction: the whole world in a bounded cube, for real captures whose content reaches far beyond
any box (walls, windows, sky).

The scene box (``aabb``) is the inner region: normalised to [-1, 1]^3 it is left as it is, and everything
outside it is pulled into the shell up to [-2, 2]^3 by nerfacto's L-inf variant of mip-NeRF 360's contraction,
``u -> (2 - 1/|u|_inf) u / |u|_inf``. The L-inf form maps onto a cube, so a cubic occupancy grid or hash grid
over [-2, 2]^3 uses all of its cells (the L2 form leaves the corners empty), and cells of the inner region are
boxes of the world, which lets the marcher jump over empty ones. Fields see ``contract(x) / 4 + 1/2`` in
[0, 1]^3; the occupancy grid's cells tile the contracted cube (``contracted_cell``), and the marcher samples
evenly in disparity beyond the box (``renderers.marching``), which is about evenly in the contracted cube.
A contracted field's density network gives density per unit of *contracted* length (``density_scale`` turns it
into world density): the grid then judges every cell by the opacity of one marcher step there, and the far shell
starts as empty as the box. With density per world length, faint far walls were culled (holes of background
colour in office_table's corridor) and a tiny contracted object scene trained to 16.7 dB instead of 19.7.

Operations are float32 in a fixed order that the native marcher and ``contract_unit``'s CPU op
(cuda/common/fields_math.h: contract_point, contracted_cell) repeat exactly, so the two classify every sample into
the same cell and the field sees the same inputs.
"""

from __future__ import annotations

import torch

from renderers import native


def normalized(x: torch.Tensor, aabb: torch.Tensor) -> torch.Tensor:
    """Points [N, 3] in the box's frame: the box ``aabb`` [2, 3] -> [-1, 1]^3."""
    centre, half = (aabb[0] + aabb[1]) * 0.5, (aabb[1] - aabb[0]) * 0.5
    return (x - centre) / half


def contract(x: torch.Tensor, aabb: torch.Tensor) -> torch.Tensor:
    """World points [N, 3] -> the contracted cube [-2, 2]^3 (identity on the box, normalised to [-1, 1]^3)."""
    u = normalized(x, aabb)
    m = u.abs().amax(-1, keepdim=True)
    return torch.where(m > 1, u * ((2 - 1 / m) / m), u)


def contract_unit(x: torch.Tensor, aabb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``contract_unit_reference`` by the native CPU op where ``x`` is float32 on the CPU and needs no gradient
    (a contracted field's inputs while rendering or training without camera refinement)."""
    cpu_no_grad = x.device.type == "cpu" and x.dim() == 2 and not (x.requires_grad and torch.is_grad_enabled())
    ops = native.ops_for(x, aabb) if cpu_no_grad else None
    if ops is None:
        return contract_unit_reference(x, aabb)
    return ops.contract_unit(x, aabb)


def contract_unit_reference(x: torch.Tensor, aabb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a contracted field sees of world points [N, 3], the contracted cube mapped to [0, 1]^3, and what turns
    its density there into world density (``density_scale``) [N]."""
    return contract(x, aabb) * 0.25 + 0.5, density_scale(x, aabb)


def uncontract(u: torch.Tensor, aabb: torch.Tensor) -> torch.Tensor:
    """Inverse of ``contract``: points [N, 3] of the open cube (-2, 2)^3 -> world points."""
    m = u.abs().amax(-1, keepdim=True)
    v = torch.where(m > 1, u / (m * (2 - m)), u)  # |v|_inf = 1 / (2 - m) beyond the box
    centre, half = (aabb[0] + aabb[1]) * 0.5, (aabb[1] - aabb[0]) * 0.5
    return v * half + centre


def contracted_cell(x: torch.Tensor, aabb: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """Cell indices [N, 3] (int64, clamped into the grid) of world points in a grid of ``res`` [3] cells over the
    contracted cube of ``aabb``."""
    g = torch.floor((contract(x, aabb) + 2.0) * 0.25 * res.float())
    return torch.minimum(g.clamp_min(0), res - 1).long()


def density_scale(x: torch.Tensor, aabb: torch.Tensor) -> torch.Tensor:
    """The contraction's stretch along rays at world points [N, 3]: 1 in the box, ``1 / |u|_inf^2`` beyond it
    (the derivative of ``2 - 1/|u|_inf``). A contracted field's world density is its density per unit of
    contracted length times this."""
    return normalized(x, aabb).abs().amax(-1).clamp_min(1).square().reciprocal()


def warped_distance(t: torch.Tensor) -> torch.Tensor:
    """Distances along rays as the marcher spaces them in a contracted scene: ``t`` up to 1 (the box's scale),
    ``2 - 1/t`` beyond (linear, then even in disparity, as nerfacto's piecewise sampler). Losses that compare
    distances (the distortion loss) use it so a far wall's samples do not outweigh everything near."""
    return torch.where(t > 1, 2 - 1 / t.clamp_min(1e-6), t)
