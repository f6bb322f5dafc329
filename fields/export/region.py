"""The world region that mesh and point-cloud export keep: the box a user crops to, else the run's foreground.

A run with scene contraction keeps its scene box (the walls and sky around it lie beyond). A run in NDC (a
forward-facing capture) has no box in the world: its field reaches from the near plane to infinity. Its
foreground is the box of the bulk of the scene's SfM points (``SceneRecord.points_box``), grown by 5% as the
scene box is, or without points the box around the reference camera's frustum between the scene's near and
far bounds (LLFF's: where each image's points start and end), or without them (a record written before they
were kept) from the NDC near plane out to the 90th percentile of the occupied cells' depths. Other runs keep everything (a mesh: the field's box).
"""

from __future__ import annotations

import torch

from fields.export import ExportError
from fields.run.scene_record import SceneRecord
from renderers.model import VolumeModel
from renderers.ndc import NDC
from renderers.occupancy import OccupancyGrid

PAD = 0.05  # of the points box's longest side, each side (as ``scenes.orient.scene_box``)
FAR_QUANTILE = 0.9  # of the occupied NDC cells' depths: the far end of an NDC run's foreground without points
MAX_NDC_Z = 0.9  # occupied cells nearer than this (20 near planes) count: the rest is background at infinity


def crop_box(crop: tuple[float, float, float, float, float, float] | None) -> torch.Tensor | None:
    """``--crop`` (x_min y_min z_min x_max y_max z_max) as a box [2, 3]; ExportError unless each max > min."""
    if crop is None:
        return None
    box = torch.tensor(crop, dtype=torch.float32).reshape(2, 3)
    if not bool((box[1] > box[0]).all()):
        raise ExportError(f"--crop {' '.join(map(str, crop))}: each maximum must exceed its minimum")
    return box


def export_region(model: VolumeModel, record: SceneRecord | None, crop: torch.Tensor | None = None
                  ) -> torch.Tensor | None:
    """The world box [2, 3] an export keeps: ``crop``, else an NDC run's foreground (from what its scene
    ``record`` knows of where the content lies, if anything), else a contracted run's scene box, else None
    (everything)."""
    if crop is not None:
        return crop
    ndc = getattr(model, "ndc", None)
    if ndc is None:
        return model.grid.aabb if model.grid.contracted else None
    if record is not None and record.points_box is not None:
        return padded(record.points_box)
    return frustum_region(ndc, model.grid, None if record is None else record.near_far)


def padded(box: torch.Tensor) -> torch.Tensor:
    """``box`` [2, 3] grown by ``PAD`` of its longest side on each side."""
    pad = PAD * float((box[1] - box[0]).max())
    return torch.stack([box[0] - pad, box[1] + pad])


def frustum_region(ndc: NDC, grid: OccupancyGrid, near_far: tuple[float, float] | None) -> torch.Tensor:
    """The world box around the reference camera's frustum (the NDC grid's x and y extent) between the depths
    ``near_far``, or without them from the near plane to the ``FAR_QUANTILE`` depth of the occupied cells within
    ``MAX_NDC_Z`` (there if none is occupied)."""
    if near_far is not None:
        near_z, far_z = (1 - 2 * ndc.near / depth for depth in near_far)  # NDC z of those depths
    else:
        z = grid.cell_centers(grid.binary.flatten().nonzero()[:, 0])[:, 2]
        z = z[z <= MAX_NDC_Z]
        near_z, far_z = -1.0, float(z.quantile(FAR_QUANTILE)) if len(z) else MAX_NDC_Z
    (x0, y0), (x1, y1) = grid.aabb[0, :2].tolist(), grid.aabb[1, :2].tolist()
    corners = torch.tensor([[x, y, zz] for x in (x0, x1) for y in (y0, y1) for zz in (near_z, far_z)])
    world = ndc.to_world(corners)
    return torch.stack([world.amin(0), world.amax(0)])
