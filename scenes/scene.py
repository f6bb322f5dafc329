"""The plain-data record every loader returns: cameras, images and the scene box."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scenes.cameras import Cameras


@dataclass
class SceneSplit:
    """One split (train/val/test) of a scene.

    ``images`` are straight (not premultiplied) RGBA floats in [0, 1]; the alpha channel is 1 where the format
    has none. Compositing on a background (``renderers.imaging.on_background``) happens in the trainer and in
    evaluation, so training can use random backgrounds while evaluation composites on the scene's colour.
    """

    name: str
    split: str
    cameras: Cameras
    images: torch.Tensor  # [N, H, W, 4] float32 in [0, 1]
    aabb: torch.Tensor  # [2, 3] min and max corner of the scene box
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    file_paths: tuple[str, ...] = ()
    # How the loader moved the dataset's poses into this world: position_world = scale * R (position_dataset -
    # centre), camera rotations R @ rotation_dataset, with (centre, scale) = from_dataset and R =
    # from_dataset_rotation. Real captures (nerfstudio, COLMAP, LLFF) are oriented (mean camera up = +Z),
    # centred and scaled into the unit sphere (scenes/orient.py); Blender scenes are left as they are.
    from_dataset: tuple[tuple[float, float, float], float] = ((0.0, 0.0, 0.0), 1.0)
    from_dataset_rotation: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    points: torch.Tensor | None = None  # [P, 3] structure-from-motion points in the world frame, if the scene has them
    point_colors: torch.Tensor | None = None  # [P, 3] uint8 RGB of ``points``
    near_far: tuple[float, float] | None = None  # nearest and farthest scene content the cameras see (world units)

    def __len__(self) -> int:
        return len(self.cameras)
