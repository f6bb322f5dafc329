"""The plain-data record every loader returns: cameras, images and the scene box."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scenes.cameras import Cameras


@dataclass
class SceneSplit:
    """One split (train/val/test) of a scene.

    ``images`` are straight (not premultiplied) RGBA floats in [0, 1]; the alpha channel is 1 where the format
    has none. Compositing on a background happens in the trainer and in evaluation, so training can use random
    backgrounds while evaluation composites on the scene's background colour.
    """

    name: str
    split: str
    cameras: Cameras
    images: torch.Tensor  # [N, H, W, 4] float32 in [0, 1]
    aabb: torch.Tensor  # [2, 3] min and max corner of the scene box
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    file_paths: tuple[str, ...] = ()
    # How the loader moved the dataset's poses into this world: position_world = (position_dataset - centre)
    # * scale, rotations unchanged. nerfstudio-format scenes are re-centred and scaled; Blender scenes are not.
    from_dataset: tuple[tuple[float, float, float], float] = ((0.0, 0.0, 0.0), 1.0)

    def __len__(self) -> int:
        return len(self.cameras)

    def composited(self, idx=slice(None), background: torch.Tensor | None = None) -> torch.Tensor:
        """RGB images composited on ``background`` (default: the scene's colour), [N, H, W, 3]."""
        img = self.images[idx]
        bg = torch.tensor(self.background) if background is None else background
        return img[..., :3] * img[..., 3:] + bg * (1.0 - img[..., 3:])
