"""Undistorting images for the pinhole-only Gaussian rasterizer: each pinhole pixel holds what the real lens
recorded along that pixel's ray (checked against the ray generation of both camera models)."""

from __future__ import annotations

import pytest
import torch

from scenes import SceneSplit, image_rays
from scenes.cameras import Cameras
from scenes.images import Images
from scenes.scene import to_uint8
from scenes.undistort import undistorted


def sky(d: torch.Tensor) -> torch.Tensor:
    """A smooth colour for each ray direction: what a distant painted sphere would show."""
    return 0.5 + 0.4 * torch.sin(torch.stack([3 * d[..., 0], 4 * d[..., 1], 5 * d[..., 2]], -1))


@pytest.mark.parametrize("fisheye", [False, True])
def test_undistorted_pixels_see_what_the_lens_saw_along_their_rays(fisheye):
    w, h = 64, 48
    dist = torch.tensor([[0.05, 0.01, 0.0, 0.0]]) if fisheye else torch.tensor([[0.3, -0.05, 0.001, -0.002]])
    cams = Cameras(torch.eye(4)[None], torch.tensor([40.0]), torch.tensor([42.0]), torch.tensor([31.0]),
                   torch.tensor([25.0]), w, h, dist, fisheye)
    seen = sky(image_rays(cams, 0)[1])  # the photo the real lens takes
    rgba = torch.cat([seen, torch.ones(h, w, 1)], -1)
    split = SceneSplit("sky", "train", cams, Images.stack([to_uint8(rgba)]), torch.tensor([[-1.0] * 3, [1.0] * 3]))
    out = undistorted(split)
    assert out.cameras.distortion is None and not out.cameras.fisheye and out.images.stacked().shape == split.images.stacked().shape
    expected = sky(image_rays(out.cameras, 0)[1])  # what an ideal pinhole there would see
    keep = out.masks[0]
    assert 0.6 < keep.float().mean() and bool(keep[h // 2, w // 2])
    assert (out.rgba(0)[..., :3] - expected).abs()[keep].max() < 0.02  # 8-bit and bilinear error only
    assert (split.rgba(0)[..., :3] - expected).abs()[keep].max() > 0.05  # unresampled, the lens shows


def test_a_pinhole_split_is_left_as_it_is():
    cams = Cameras(torch.eye(4)[None], torch.tensor([10.0]), torch.tensor([10.0]), torch.tensor([4.0]),
                   torch.tensor([4.0]), 8, 8)
    split = SceneSplit("p", "train", cams, Images.stack([torch.zeros(8, 8, 4, dtype=torch.uint8)]), torch.zeros(2, 3))
    assert undistorted(split) is split
