"""The plain-data record every loader returns: cameras, images and the scene box."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scenes.cameras import Cameras, pixel_rays
from scenes.images import Images


@dataclass
class SceneSplit:
    """One split (train/val/test) of a scene.

    ``images`` are straight (not premultiplied) RGBA, 8 bits per channel (4 bytes a pixel: a few hundred phone
    photos fit in a few GB), each at its camera's size; ``rgba`` gives one as floats in [0, 1]. The alpha
    channel is 255 where the format has none. Compositing on a background (``renderers.imaging.on_background``)
    happens in the trainer and in evaluation, so training can use random backgrounds while evaluation composites
    on the scene's colour.
    """

    name: str
    split: str
    cameras: Cameras
    images: Images  # N images [H_i, W_i, 4] uint8
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
    masks: Images | None = None  # N masks [H_i, W_i] bool: False where a pixel is neither trained on nor evaluated

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def captured(self) -> bool:
        """Whether this is a real capture (poses from structure-from-motion or LLFF, with a depth range or SfM
        points) rather than a synthetic scene in a box: the 'auto' capture settings of a run turn on for it."""
        return self.near_far is not None or (self.points is not None and len(self.points) > 0)

    def rgba(self, i: int, window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Image ``i`` as straight RGBA float32 [H, W, 4] in [0, 1], or only its pixel ``window`` (x0, y0, width,
        height): a training crop converts its own pixels, not the whole image's."""
        return to_float(window_of(self.images[i], window))


def window_of(image: torch.Tensor, window: tuple[int, int, int, int] | None) -> torch.Tensor:
    """The pixels [h, w, ...] of ``image`` [H, W, ...] in ``window`` (x0, y0, width, height); all of them for None."""
    if window is None:
        return image
    x0, y0, w, h = window
    return image[y0:y0 + h, x0:x0 + w]


def to_float(rgba8: torch.Tensor) -> torch.Tensor:
    """8-bit colour as float32 in [0, 1]."""
    return rgba8.float() / 255.0


def to_uint8(rgba: torch.Tensor) -> torch.Tensor:
    """Colour in [0, 1] as 8 bits (rounded)."""
    return (rgba.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)


def points_in_view(data: SceneSplit, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random points [n, 3] over what a captured split's cameras see, with the colours [n, 3] (uint8) of the
    pixels they were cast through: a random pixel of a random image each, at a depth drawn evenly in disparity
    between the split's near and far bounds, so distant walls and sky get as many points per pixel as the near
    scene. Seeds explicit primitives (Gaussians) where a capture has no SfM points."""
    if data.near_far is None:
        raise ValueError(f"{data.name}: points in view need the split's near and far bounds")
    cams, (near, far) = data.cameras, data.near_far
    image = torch.randint(0, len(data), (n,), generator=generator)
    width, height = cams.width[image], cams.height[image]  # each image at its own size
    px = torch.rand(n, generator=generator) * width
    py = torch.rand(n, generator=generator) * height
    origins, dirs = pixel_rays(cams, image, px, py)
    disparity = 1 / near + torch.rand(n, generator=generator) * (1 / far - 1 / near)
    x, y = torch.minimum(px.long(), width - 1), torch.minimum(py.long(), height - 1)
    colors = data.images.pixels[data.images.flat(image, x, y), :3]
    return origins + dirs / disparity[:, None], colors
