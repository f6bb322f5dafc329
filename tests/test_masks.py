"""Masks (nerfstudio's per-frame ``mask_path``, a COLMAP workspace's ``masks/``): masked pixels are never training
rays and are left out of evaluation."""

from __future__ import annotations

import dataclasses
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import write_nerfstudio
from fields.evaluation import evaluate
from fields.training.steps import TrainingRays
from scenes import SceneError, image_rays, load_split
from test_colmap_llff import write_colmap


def keep_right_half(h: int, w: int, i: int) -> np.ndarray:
    """A mask that drops the left half and, to tell frames apart, the first ``i`` rows."""
    m = np.full((h, w), 255, np.uint8)
    m[:, : w // 2] = 0
    m[:i] = 0
    return m


def masked_nerfstudio(root, n: int = 8, w: int = 12, h: int = 10):
    write_nerfstudio(root, n=n, w=w, h=h)
    meta = json.loads((root / "transforms.json").read_text())
    (root / "masks").mkdir()
    for i, frame in enumerate(meta["frames"]):
        iio.imwrite(root / "masks" / f"mask_{i:03d}.png", keep_right_half(h, w, i))
        frame["mask_path"] = f"masks/mask_{i:03d}.png"
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def test_nerfstudio_masks_load_and_downscale(tmp_path):
    root = masked_nerfstudio(tmp_path / "ns")
    train = load_split(root, "train")  # frames 1..7 (frame 0 is held out)
    assert train.masks.stacked().shape == (7, 10, 12) and train.masks.pixels.dtype == torch.bool
    for k, i in enumerate(range(1, 8)):
        assert torch.equal(train.masks[k], torch.from_numpy(keep_right_half(10, 12, i) > 0))
    assert load_split(root, "train", downscale=2).masks.stacked().shape == (7, 5, 6)
    assert load_split(write_nerfstudio(tmp_path / "plain"), "train").masks is None


def test_a_frame_without_its_mask_is_named(tmp_path):
    root = masked_nerfstudio(tmp_path / "ns")
    meta = json.loads((root / "transforms.json").read_text())
    del meta["frames"][3]["mask_path"]
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(SceneError, match=r"transforms.json: frames\[3\] has no 'mask_path'"):
        load_split(root, "train")


def test_masked_pixels_are_never_training_rays(tmp_path):
    train = load_split(masked_nerfstudio(tmp_path / "ns"), "train")
    rays = TrainingRays(train)
    kept = train.masks.pixels.nonzero()[:, 0]
    assert len(rays) == len(kept) < train.masks.pixels.numel()
    drawn = rays.draw(20_000, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == set(kept.tolist())  # every kept pixel drawn at least once, no other
    # a drawn pixel's ray and colour are those of its image and position
    cam, rest = drawn[:50] // 120, drawn[:50] % 120
    o, d = rays.rays(drawn[:50])
    for k in range(50):
        oi, di = image_rays(train.cameras, int(cam[k]))
        assert torch.allclose(d[k], di.reshape(-1, 3)[rest[k]], atol=1e-6)
        assert torch.equal(rays.colors(drawn[k:k + 1])[0], train.rgba(int(cam[k])).reshape(-1, 4)[rest[k]])


class Oracle:
    """Renders the ground truth where the masks keep pixels and its negative where they do not."""

    pinhole_only = False

    def __init__(self, split):
        self.split, self.masks = split, split.masks

    def render(self, cams, i, background):
        rgba = self.split.rgba(i)
        gt = rgba[..., :3] * rgba[..., 3:] + background * (1 - rgba[..., 3:])
        rgb = torch.where(self.masks[i][..., None], gt, 1 - gt)
        return {"rgb": rgb, "depth": torch.zeros(rgb.shape[:2]), "opacity": torch.ones(rgb.shape[:2])}


def test_evaluation_leaves_masked_pixels_out(tmp_path):
    test = load_split(masked_nerfstudio(tmp_path / "ns", n=16, w=32, h=24), "test")
    oracle = Oracle(test)
    result = evaluate(oracle, test, every=1, show_progress=False)
    assert result["views"] == 2 and result["psnr"] == pytest.approx(100.0)  # exact where it counts (the floor)
    assert result["psnr_every_pixel"] < 20  # the masked pixels are wrong, and counted in this figure
    assert evaluate(oracle, dataclasses.replace(test, masks=None), every=1, show_progress=False)["psnr"] < 20


def test_colmap_masks_folder(tmp_path):
    root = write_colmap(tmp_path / "ws", "PINHOLE", text=False)
    (root / "masks").mkdir()
    names = sorted(p.name for p in (root / "images").iterdir())
    h, w = iio.imread(root / "images" / names[0]).shape[:2]
    for i, name in enumerate(names):
        iio.imwrite(root / "masks" / f"{name}.png", keep_right_half(h, w, i))
    train = load_split(root, "train")
    masks = train.masks.stacked()
    assert masks.shape == (len(train), h, w) and not bool(masks[:, :, : w // 2].any())
    (root / "masks" / f"{names[2]}.png").unlink()
    with pytest.raises(SceneError, match=rf"masks/{names[2]}.png: mask not found"):
        load_split(root, "train")
