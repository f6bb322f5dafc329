"""Black borders: edge rows and columns that are black in every image of a split.

A video decoder's padding, a letterboxed frame or a resize of either leaves lines along the image edge that hold
no scene: office_table's images_2 end in a black row, and the row above it is half black (the resize blended the
two). No field can render them, training on them pulls dark colour into the scene and evaluating on them costs
~1.8 dB of PSNR for one row in 540. ``mask_black_borders`` finds such lines and masks them, with the one line
next to them that a resize or JPEG blends with the black, out of training and evaluation.

A line counts as black where nearly all its pixels are opaque and dark in every image of the split: padding is
made by the pipeline that made the images, so it is in all of them; a scene's own dark edge is not. Transparent
pixels (Blender's backgrounds) never count.
"""

from __future__ import annotations

import dataclasses

import torch

from scenes.images import Images
from scenes.io import say_once
from scenes.scene import SceneSplit

DARK = 16
"""Largest 8-bit channel value of a black pixel (JPEG noise lifts padding a few levels above 0)."""
SHARE = 0.98
"""Share of a line's pixels that must be black for the line to be."""
MOST = 4
"""At most 1/MOST of an image's rows (columns) from each edge are looked at: letterbox bars are smaller."""
EDGES = ("top", "bottom", "left", "right")


def black_lines(image: torch.Tensor) -> tuple[int, int, int, int]:
    """How many lines of ``image`` [H, W, 4] (straight RGBA, uint8) are black from each edge: rows from the top
    and from the bottom, columns from the left and from the right."""
    black = (image[..., :3].amax(-1) <= DARK) & (image[..., 3] == 255)  # [H, W]
    h, w = black.shape
    rows, cols = black.float().mean(1) >= SHARE, black.float().mean(0) >= SHARE

    def run(lines: torch.Tensor, most: int) -> int:  # leading black lines, at most ``most``
        ends = (~lines[:most]).nonzero()
        return int(ends[0]) if len(ends) else min(most, len(lines))

    return run(rows, h // MOST), run(rows.flip(0), h // MOST), run(cols, w // MOST), run(cols.flip(0), w // MOST)


def black_borders(images: Images) -> tuple[int, int, int, int]:
    """The lines black in every one of ``images`` from each edge (top, bottom, left, right)."""
    if not len(images):
        return 0, 0, 0, 0
    found = torch.tensor([black_lines(images[i]) for i in range(len(images))])
    return tuple(int(n) for n in found.amin(0))


def border_mask(width: int, height: int, lines: tuple[int, int, int, int]) -> torch.Tensor:
    """A [height, width] bool mask that drops ``lines`` (top, bottom, left, right) from each edge, and the line
    next to each black border (blended with it by a resize or JPEG)."""
    top, bottom, left, right = (n + 1 if n else 0 for n in lines)
    keep = torch.zeros(height, width, dtype=torch.bool)
    keep[top:height - bottom, left:width - right] = True
    return keep


def mask_black_borders(split: SceneSplit) -> SceneSplit:
    """``split`` with its black borders (``black_borders``) masked out of training and evaluation, and a notice
    that says which; unchanged where it has none."""
    lines = black_borders(split.images)
    if not any(lines):
        return split
    masks = []
    for i in range(len(split)):
        keep = border_mask(*split.images.size(i), lines)
        masks.append(keep if split.masks is None else keep & split.masks[i])
    where = ", ".join(f"{n} {'row' if e in ('top', 'bottom') else 'column'}{'s' if n > 1 else ''} at the {e}"
                      for e, n in zip(EDGES, lines) if n)
    say_once(f"scene '{split.name}': every image has a black border ({where}: padding, not scene); masked, with "
             "the line next to it, out of training and evaluation (--black-borders keep to use them)")
    return dataclasses.replace(split, masks=Images.stack(masks))
