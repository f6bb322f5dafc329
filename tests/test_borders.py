"""Black borders (``scenes.borders``): edge lines black in every image are masked out of training and evaluation,
with the line next to them; a scene's own dark edges and transparent backgrounds are not."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import torch

from conftest import write_nerfstudio
from fields.run.config import SceneConfig
from scenes import load_split
from scenes.borders import black_borders, black_lines, border_mask, mask_black_borders
from scenes.images import Images
from test_masks import masked_nerfstudio


def rgba(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A random opaque image (values 40..255: no pixel is black)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(40, 256, (h, w, 4), dtype=torch.uint8, generator=g)
    image[..., 3] = 255
    return image


def test_black_lines_are_counted_from_each_edge():
    image = rgba(20, 16)
    image[-1, :, :3] = 3  # padding with JPEG noise: not exactly 0
    image[:, :2, :3] = 0
    assert black_lines(image) == (0, 1, 2, 0)
    image[-1, 5, :3] = 200  # one bright pixel in 16 (> 2 %) makes the row scene
    assert black_lines(image) == (0, 0, 2, 0)
    transparent = rgba(20, 16)
    transparent[0] = 0  # black and transparent (a Blender background): not padding
    assert black_lines(transparent) == (0, 0, 0, 0)
    dark = torch.zeros(20, 16, 4, dtype=torch.uint8)
    dark[..., 3] = 255
    assert black_lines(dark) == (5, 5, 4, 4)  # at most a quarter of the image from each edge


def test_a_border_counts_only_where_every_image_has_it():
    a, b = rgba(12, 10, 0), rgba(12, 10, 1)
    a[-2:, :, :3] = 0
    b[-1:, :, :3] = 0
    b[:, -1, :3] = 0  # only b's right column is black: a scene's own dark edge
    assert black_borders(Images.stack([a, b])) == (0, 1, 0, 0)
    assert black_borders(Images.stack([a, rgba(12, 10, 2)])) == (0, 0, 0, 0)


def test_border_mask_drops_the_black_lines_and_their_neighbour():
    keep = border_mask(10, 8, (0, 1, 2, 0))
    assert keep.shape == (8, 10)
    assert not keep[-2:].any() and keep[:-2, 3:].all() and not keep[:, :3].any()
    assert border_mask(10, 8, (0, 0, 0, 0)).all()


def padded_nerfstudio(root, n: int = 8, w: int = 12, h: int = 10, rows: int = 1):
    """``write_nerfstudio``'s scene with its images' last ``rows`` rows black, as office_table's images_2."""
    write_nerfstudio(root, n=n, w=w, h=h)
    for path in (root / "images").iterdir():
        image = iio.imread(path)
        image[-rows:] = 0
        iio.imwrite(path, image)
    return root


def test_the_scene_config_masks_padding_unless_told_to_keep_it(tmp_path, capsys):
    root = padded_nerfstudio(tmp_path / "ns", rows=1)
    train = SceneConfig(data=root).load("train")
    assert train.masks is not None and "1 row at the bottom" in capsys.readouterr().out
    masks = train.masks.stacked()
    assert not masks[:, -2:].any() and masks[:, :-2].all()  # the black row and the one it blends into
    assert SceneConfig(data=root, black_borders="keep").load("train").masks is None
    plain = SceneConfig(data=write_nerfstudio(tmp_path / "plain")).load("train")
    assert plain.masks is None


def test_border_masks_combine_with_the_scene_own_masks(tmp_path):
    root = masked_nerfstudio(tmp_path / "ns", w=12, h=10)
    for path in (root / "images").iterdir():
        image = iio.imread(path)
        image[:, -1] = 0
        iio.imwrite(path, image)
    own = load_split(root, "train")
    both = mask_black_borders(own)
    expected = own.masks.stacked() & border_mask(12, 10, (0, 0, 0, 1))
    assert torch.equal(both.masks.stacked(), expected)
    assert not np.array_equal(expected.numpy(), own.masks.stacked().numpy())
