"""Loaders (Blender, nerfstudio), the registry and the procedural scene, including bad inputs."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import write_blender, write_nerfstudio
from renderers.imaging import on_background
from scenes import SceneError, find_scene, load_split
from scenes import procedural
from scenes.scene import to_float


def test_blender_loads_cameras_and_images(tmp_path):
    root = write_blender(tmp_path / "toy", n=3, size=8, fov=0.7)
    s = load_split(root, "train")
    assert s.images.stacked().shape == (3, 8, 8, 4)
    assert s.cameras.size(0) == (8, 8) and s.images.uniform
    assert torch.allclose(s.cameras.fx, torch.full((3,), 0.5 * 8 / np.tan(0.35)))
    assert torch.allclose(s.cameras.cx, torch.full((3,), 4.0))
    assert s.aabb.tolist() == [[-1.5] * 3, [1.5] * 3]
    raw = iio.imread(root / "train" / "r_1.png")
    assert torch.equal(s.images[1], torch.from_numpy(raw)) and torch.allclose(s.rgba(1), torch.from_numpy(raw).float() / 255)


def test_blender_downscale_halves_size_and_focal(tmp_path):
    root = write_blender(tmp_path / "toy", size=8)
    full, half = load_split(root, "test"), load_split(root, "test", downscale=2)
    assert half.images.stacked().shape == (3, 4, 4, 4)
    assert torch.allclose(half.cameras.fx, full.cameras.fx / 2)
    # premultiplied box average: the composited half-size image is the box average of the composited one
    white = torch.ones(3)
    comp_full = on_background(to_float(full.images.stacked()), white).permute(0, 3, 1, 2)
    comp_half = on_background(to_float(half.images.stacked()), white).permute(0, 3, 1, 2)
    # images are stored in 8 bits: the downscaled colour and alpha are each rounded to the nearest 1/255, so the
    # composite of the half-size image is within 2 x 0.5 / 255 of the box average
    assert torch.allclose(torch.nn.functional.avg_pool2d(comp_full, 2), comp_half, atol=1 / 255 + 1e-5)


def test_on_background_composites_straight_alpha():
    rgba = torch.tensor([[1.0, 0.0, 0.0, 0.25], [0.2, 0.4, 0.6, 1.0], [0.9, 0.9, 0.9, 0.0]])
    out = on_background(rgba, torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(out, torch.tensor([[0.25, 0.0, 0.75], [0.2, 0.4, 0.6], [0.0, 0.0, 1.0]]))


def test_nerfstudio_intrinsics_distortion_and_split(tmp_path):
    root = write_nerfstudio(tmp_path / "ns", n=8)
    train, test = load_split(root, "train"), load_split(root, "test")
    assert len(train) == 7 and len(test) == 1  # every 8th frame is held out
    assert train.cameras.fx[0] == 10.0 and train.cameras.fy[0] == 11.0
    assert train.cameras.distortion is not None
    assert torch.allclose(train.cameras.distortion[0], torch.tensor([0.1, -0.02, 0.001, -0.002]))
    assert train.images.stacked().shape == (7, 10, 12, 4) and bool((train.images.pixels[:, 3] == 255).all())
    # poses are re-centred and scaled so the farthest camera is at distance 1
    assert train.cameras.centers.norm(dim=-1).max() <= 1.0 + 1e-5


def test_nerfstudio_per_frame_override_and_named_split(tmp_path):
    root = write_nerfstudio(tmp_path / "ns", n=4)
    meta = json.loads((root / "transforms.json").read_text())
    meta["frames"][2]["fl_x"] = 20.0
    meta["test_filenames"] = ["images/frame_002.png"]
    meta["train_filenames"] = [f["file_path"] for i, f in enumerate(meta["frames"]) if i != 2]
    (root / "transforms.json").write_text(json.dumps(meta))
    test = load_split(root, "test")
    assert len(test) == 1 and test.cameras.fx[0] == 20.0
    assert len(load_split(root, "train")) == 3


def test_missing_file_error_names_it(tmp_path):
    root = write_blender(tmp_path / "toy")
    (root / "train" / "r_1.png").unlink()
    with pytest.raises(SceneError, match=r"r_1.*not found"):
        load_split(root, "train")


def test_wrong_json_field_error_names_file_and_key(tmp_path):
    root = write_blender(tmp_path / "toy")
    meta = json.loads((root / "transforms_train.json").read_text())
    meta["camera_angle_x"] = "wide"
    (root / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(SceneError, match=r"transforms_train.json.*camera_angle_x"):
        load_split(root, "train")
    meta["camera_angle_x"] = 0.7
    meta["frames"][0]["transform_matrix"] = [[1, 0], [0, 1]]
    (root / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(SceneError, match=r"transforms_train.json.*transform_matrix.*frames\[0\]"):
        load_split(root, "train")


def test_invalid_json_and_missing_key(tmp_path):
    root = write_nerfstudio(tmp_path / "ns")
    (root / "transforms.json").write_text("{not json")
    with pytest.raises(SceneError, match=r"transforms.json: not valid JSON"):
        load_split(root, "train")
    (root / "transforms.json").write_text(json.dumps({"frames": [{"file_path": "a.png",
                                                                  "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(SceneError, match=r"transforms.json: missing 'w'"):
        load_split(root, "train")


def test_an_image_of_another_size_loads_at_its_own(tmp_path):
    root = write_blender(tmp_path / "toy", size=8)
    iio.imwrite(root / "train" / "r_2.png", np.zeros((6, 10, 4), dtype=np.uint8))
    s = load_split(root, "train")
    assert [s.images.size(i) for i in range(3)] == [s.cameras.size(i) for i in range(3)] == [(8, 8), (8, 8), (10, 6)]
    assert s.cameras.fx[2].item() == pytest.approx(0.5 * 10 / np.tan(0.35))  # camera_angle_x spans its width
    assert (s.cameras.cx[2].item(), s.cameras.cy[2].item()) == (5.0, 3.0)


def test_registry_finds_scene_and_explains_missing(tmp_path, monkeypatch):
    write_blender(tmp_path / "nerf_synthetic" / "toy")
    monkeypatch.setenv("FIELDS_DATA", str(tmp_path))
    assert find_scene("toy") == tmp_path / "nerf_synthetic" / "toy"
    with pytest.raises(SceneError, match=r"scene 'chair' not found; looked in: .*nerf_synthetic/chair"):
        find_scene("chair")
    monkeypatch.delenv("FIELDS_DATA")
    with pytest.raises(SceneError, match=r"no data root set.*FIELDS_DATA"):
        find_scene("chair")


def test_procedural_scene_is_consistent_with_its_sdf(procedural_root):
    s = load_split(procedural_root, "test")
    assert len(s) == procedural.SPLITS["test"] and s.aabb.tolist() == [list(procedural.AABB[0]), list(procedural.AABB[1])]
    # Pixels whose ray hits the analytic surface are opaque, the others transparent (edges are anti-aliased).
    from scenes import image_rays

    o, d = image_rays(s.cameras, 0)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    t = torch.full((o.shape[0],), procedural.RADIUS - 1.8)
    for _ in range(128):
        t = t + procedural.sdf(o + t[:, None] * d)
    hit = procedural.sdf(o + t[:, None] * d).abs() < 1e-3
    alpha = s.rgba(0)[..., 3].reshape(-1)
    assert (alpha[hit] > 0.5).float().mean() > 0.98 and (alpha[~hit] < 0.5).float().mean() > 0.98
    pts = procedural.surface_points(500)
    assert pts.shape == (500, 3) and procedural.sdf(pts).abs().max() < 1e-4
