"""COLMAP and LLFF loaders, downscaling to any size, and the placement of real captures in the world.

COLMAP models are written by pycolmap itself (a real peer writes, we read) and our rays are compared with
pycolmap's own unprojection. The LLFF axis conversion is checked by hand on fern's first row and against the
COLMAP model of the same capture; both need the real captures (../shared/scenes/real), skipped without them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pycolmap
import pytest
import torch
import trimesh

from conftest import write_nerfstudio
from scenes import SceneError, find_scene, load_split, pixel_rays
from scenes.colmap import MODELS, OPENCV_TO_OPENGL, read_model
from scenes.llff import read_poses_bounds

W, H = 24, 16
PARAMS = {  # COLMAP's parameter order for each model
    "SIMPLE_PINHOLE": [20.0, 12.5, 7.5],
    "PINHOLE": [20.0, 22.0, 12.5, 7.5],
    "SIMPLE_RADIAL": [20.0, 12.5, 7.5, 0.08],
    "RADIAL": [20.0, 12.5, 7.5, 0.08, -0.02],
    "OPENCV": [20.0, 22.0, 12.5, 7.5, 0.08, -0.02, 0.003, -0.002],
    "OPENCV_FISHEYE": [12.0, 13.0, 12.5, 7.5, 0.05, -0.01, 0.004, -0.001],
}


def real_scene(name: str) -> Path:
    """A real capture from the shared data folder (next to $FIELDS_DATA, or ../shared beside the clone)."""
    roots = [Path(__file__).resolve().parents[2] / "shared" / "scenes" / "real"]
    if os.environ.get("FIELDS_DATA"):
        roots.insert(0, Path(os.environ["FIELDS_DATA"]).parent / "real")
    for root in roots:
        if (root / name).is_dir():
            return root / name
    pytest.skip(f"real capture '{name}' not found in {', '.join(map(str, roots))}")


def look_at(centre: np.ndarray, target: np.ndarray) -> pycolmap.Rigid3d:
    """COLMAP's cam_from_world (OpenCV axes) of a camera at ``centre`` looking at ``target``, world up +Y."""
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross([0.0, -1.0, 0.0], z)
    x /= np.linalg.norm(x)
    rot = np.stack([x, np.cross(z, x), z])  # rows: camera axes in the world
    return pycolmap.Rigid3d(pycolmap.Rotation3d(rot), -rot @ centre)


def write_colmap(root: Path, model: str, text: bool, n: int = 9, sizes: list[tuple[int, int]] | None = None,
                 cameras: int | None = None) -> Path:
    """A COLMAP workspace written by pycolmap: ``cameras`` cameras (default one per image, else consecutive
    images share one; focal lengths differ; ``sizes``: each camera's (width, height)), cameras on an arc around
    the origin, 200 coloured points near it, and random images of their cameras' sizes in images/."""
    rng = np.random.default_rng(2)
    rec = pycolmap.Reconstruction()
    (root / "images").mkdir(parents=True)
    cameras = n if cameras is None else cameras
    for c in range(cameras):
        w, h = sizes[c] if sizes else (W, H)
        params = list(PARAMS[model])
        params[0] *= 1 + 0.05 * c  # per-camera focal lengths
        cam = pycolmap.Camera.create_from_model_name(c + 1, model, 1.0, w, h)
        cam.params = params
        rec.add_camera_with_trivial_rig(cam)
    for i in range(n):
        a = 0.15 * i
        centre = np.array([3 * np.sin(a), 0.5 + 0.1 * i, -3 * np.cos(a)])
        cam = rec.cameras[i * cameras // n + 1]
        image = pycolmap.Image(name=f"img_{i:02d}.png", camera_id=cam.camera_id, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, look_at(centre, np.array([0.1, 0.0, 0.2])))
        iio.imwrite(root / "images" / image.name, rng.integers(0, 255, (cam.height, cam.width, 3), dtype=np.uint8))
    for _ in range(200):
        rec.add_point3D(rng.normal(0, 0.5, 3), pycolmap.Track(), rng.integers(0, 255, 3).astype(np.uint8))
    folder = root / "sparse" / "0"
    folder.mkdir(parents=True)
    rec.write_text(folder) if text else rec.write_binary(folder)
    return root


def to_world(split, xyz: np.ndarray) -> np.ndarray:
    """Dataset-frame points in the split's world frame, through the transform it records."""
    (centre, scale), rot = split.from_dataset, np.array(split.from_dataset_rotation)
    return scale * (xyz - np.array(centre)) @ rot.T


@pytest.mark.parametrize("text", [False, True], ids=["bin", "txt"])
@pytest.mark.parametrize("model", list(MODELS))
def test_colmap_cameras_and_rays_match_pycolmap(tmp_path, model, text):
    root = write_colmap(tmp_path / "ws", model, text)
    split = load_split(root, "train")  # every 8th image is held out: images 1..7 train
    rec = pycolmap.Reconstruction(root / "sparse" / "0")
    assert len(split) == 7 and split.images.stacked().shape == (7, H, W, 4)
    assert split.cameras.fisheye == (model == "OPENCV_FISHEYE")
    px = torch.tensor([0.5, 12.5, 23.5, 3.0, 20.25])
    py = torch.tensor([0.5, 7.5, 15.5, 12.0, 2.75])
    for k, i in enumerate(range(1, 8)):
        image, cam = rec.images[i + 1], rec.cameras[i + 1]
        assert split.file_paths[k].endswith(image.name)
        assert split.cameras.fx[k].item() == pytest.approx(cam.params[0], rel=1e-6)
        origins, dirs = pixel_rays(split.cameras, torch.full_like(px, k, dtype=torch.long), px, py)
        normalised = cam.cam_from_img(np.stack([px.numpy(), py.numpy()], 1).astype(np.float64))
        cam_dirs = np.concatenate([normalised, np.ones((len(px), 1))], 1)  # OpenCV camera axes
        world = cam_dirs @ image.cam_from_world().rotation.matrix()  # R^T d, row-wise
        expected = to_world(split, world + image.projection_center()) - to_world(split, image.projection_center()[None])
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        assert np.allclose(dirs.numpy(), expected, atol=1e-5), (model, i)
        assert np.allclose(origins[0].numpy(), to_world(split, image.projection_center()[None])[0], atol=1e-5)


def test_colmap_points_box_and_placement(tmp_path):
    root = write_colmap(tmp_path / "ws", "PINHOLE", text=False)
    train, test = load_split(root, "train"), load_split(root, "test")
    assert [Path(f).name for f in test.file_paths] == ["img_00.png", "img_08.png"]
    rec = read_model(root / "sparse" / "0")
    ids = sorted(rec.points3D)
    xyz = np.array([rec.points3D[i].xyz for i in ids])
    assert np.allclose(train.points.numpy(), to_world(train, xyz), atol=1e-5)
    assert np.array_equal(train.point_colors.numpy(), np.array([rec.points3D[i].color for i in ids]))
    cams = torch.cat([train.cameras.centers, test.cameras.centers])
    assert cams.norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)  # all cameras in the unit sphere, one on it
    inside = ((train.points >= train.aabb[0]) & (train.points <= train.aabb[1])).all(1).float().mean()
    assert inside > 0.9 and ((cams >= train.aabb[0]) & (cams <= train.aabb[1])).all()
    up = torch.cat([train.cameras.c2w, test.cameras.c2w])[:, :3, 1].mean(0)
    assert torch.allclose(up / up.norm(), torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)  # mean camera up is +Z
    near, far = train.near_far
    assert 0 < near < far


def test_colmap_poses_are_inverted_and_flipped_to_opengl(tmp_path):
    """The camera centre is -R^T t and the camera looks down its -Z (COLMAP's +Z) at what it sees."""
    root = write_colmap(tmp_path / "ws", "PINHOLE", text=True)
    split = load_split(root, "test")
    target = to_world(split, np.array([[0.1, 0.0, 0.2]]))[0]
    c2w = split.cameras.c2w[0].double().numpy()
    look = target - c2w[:3, 3]
    assert np.allclose(-c2w[:3, 2], look / np.linalg.norm(look), atol=1e-6)
    w2c = read_model(root / "sparse" / "0").images[1].cam_from_world().matrix()
    assert np.allclose(OPENCV_TO_OPENGL[:3, :3] @ np.linalg.inv(np.vstack([w2c, [0, 0, 0, 1]]))[:3, :3].T @ np.array(
        split.from_dataset_rotation).T, c2w[:3, :3].T, atol=1e-6)


def test_colmap_missing_image_is_named(tmp_path):
    root = write_colmap(tmp_path / "ws", "OPENCV", text=False)
    (root / "images" / "img_03.png").unlink()
    with pytest.raises(SceneError, match=r"images/img_03.png: image file not found \(the COLMAP model .*images.bin"):
        load_split(root, "train")
    assert len(load_split(root, "test")) == 2  # the test split does not need it


def test_colmap_unsupported_model_and_an_image_not_of_its_cameras_size_are_named(tmp_path):
    root = write_colmap(tmp_path / "ws", "OPENCV", text=True)
    iio.imwrite(root / "images" / "img_04.png", np.zeros((H + 2, W, 3), np.uint8))
    with pytest.raises(SceneError, match=r"img_04.png: image is 24x18, expected 24x16"):
        load_split(root, "train")
    lines = (root / "sparse" / "0" / "cameras.txt").read_text().replace(" OPENCV ", " FOV ")
    (root / "sparse" / "0" / "cameras.txt").write_text(lines)
    with pytest.raises(SceneError):
        load_split(root, "train")  # pycolmap refuses FOV with OpenCV's parameter count, naming the folder
    for f in (root / "sparse" / "0").iterdir():  # a model as older COLMAPs write it: no rigs or frames
        f.unlink()
    (root / "sparse" / "0" / "cameras.txt").write_text("1 FOV 24 16 20 20 12 8 0.1\n")
    (root / "sparse" / "0" / "images.txt").write_text("1 1 0 0 0 0 0 0 1 img_00.png\n\n")
    (root / "sparse" / "0" / "points3D.txt").write_text("")
    with pytest.raises(SceneError, match=r"cameras.txt: camera 1 uses the FOV model; supported: SIMPLE_PINHOLE"):
        load_split(root, "train")


# -- LLFF ------------------------------------------------------------------------------------------------------
def test_llff_first_pose_of_fern_by_hand():
    root = real_scene("fern")
    split = load_split(root, "test", downscale=8)  # image 0 is held out
    assert Path(split.file_paths[0]).parent.name == "images_8" and split.images.stacked().shape[1:3] == (378, 504)
    # fern's first row: [[0.0224225156, 0.989630739, -0.1418739979, -3.6791790684, 3024],
    #                    [0.9991210116, -0.0272090794, -0.0318884009, -1.603791616, 4032],
    #                    [-0.0354180026, -0.1410342742, -0.9893709611, -0.2768020639, 3260.5263328806]]
    # columns [down, right, back, centre, hwf]; ours are [right, up, back] = [col 1, -col 0, col 2]
    rot = np.array([[0.989630739, -0.0224225156, -0.1418739979],
                    [-0.0272090794, -0.9991210116, -0.0318884009],
                    [-0.1410342742, 0.0354180026, -0.9893709611]])
    centre = np.array([-3.6791790684, -1.603791616, -0.2768020639])
    c2w = split.cameras.c2w[0].double().numpy()
    assert np.allclose(c2w[:3, :3], np.array(split.from_dataset_rotation) @ rot, atol=1e-6)
    assert np.allclose(c2w[:3, 3], to_world(split, centre[None])[0], atol=1e-5)
    assert split.cameras.fx[0].item() == pytest.approx(3260.5263328806 * 504 / 4032, rel=1e-6)
    assert split.cameras.fy[0].item() == pytest.approx(3260.5263328806 * 378 / 3024, rel=1e-6)
    assert (split.cameras.cx[0].item(), split.cameras.cy[0].item()) == (252, 189)
    scale = split.from_dataset[1]
    assert split.near_far == pytest.approx((16.985296178676084 * scale, 80.00209740336334 * scale))
    assert split.points is not None and len(split.points) > 1000  # sparse/0/points3D.bin fits these poses


def test_llff_axes_agree_with_the_colmap_model_of_the_same_capture():
    """beer_video ships COLMAP's model and the same poses as poses_bounds.npy: converted, they must agree."""
    root = real_scene("beer_video")
    c2w, hwf, _ = read_poses_bounds(root / "poses_bounds.npy")
    rec = read_model(root / "sparse" / "0")
    images = sorted(rec.images.values(), key=lambda im: im.name)
    w2c = np.stack([np.vstack([im.cam_from_world().matrix(), [0, 0, 0, 1]]) for im in images])
    assert np.allclose(np.linalg.inv(w2c) @ OPENCV_TO_OPENGL, c2w, atol=1e-5)
    assert hwf[0, 2] == pytest.approx(rec.cameras[images[0].camera_id].params[0])  # LLFF keeps the first focal


def write_llff(root: Path, n: int = 10, folder: str = "images_4", w: int = 32, h: int = 24) -> Path:
    """An LLFF scene: forward-facing cameras on a small grid, poses for 4x larger originals, images in ``folder``."""
    rng = np.random.default_rng(3)
    (root / folder).mkdir(parents=True)
    rows = []
    for i in range(n):
        down, right, back = [0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]  # OpenGL identity in LLFF axes
        pose = np.array([down, right, back, [0.1 * (i % 4), 0.1 * (i // 4), 0.0], [h * 4, w * 4, 100.0]]).T
        rows.append(np.concatenate([pose.reshape(-1), [2.0, 10.0]]))
        iio.imwrite(root / folder / f"IMG_{i:03d}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    np.save(root / "poses_bounds.npy", np.array(rows))
    return root


def test_llff_folders_downscale_and_intrinsics(tmp_path, capsys):
    root = write_llff(tmp_path / "scene")
    split = load_split(root, "train")  # no images/: the smallest images_N is used
    assert split.images.stacked().shape == (8, 24, 32, 4) and split.points is None
    assert split.cameras.fx[0].item() == pytest.approx(100 * 32 / 128)
    assert "training at 32x24 from images_4/" in capsys.readouterr().out
    assert torch.allclose(split.cameras.c2w[:, :3, 1].mean(0), torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    half = load_split(root, "train", downscale=8)  # images_8 absent: images_4 halved
    assert half.images.stacked().shape == (8, 12, 16, 4) and half.cameras.fx[0].item() == pytest.approx(100 * 16 / 128)
    one = load_split(root, "train", downscale=1)
    assert one.images.stacked().shape == (8, 24, 32, 4)
    assert "no images_1/ and nothing finer; using images_4/" in capsys.readouterr().out
    assert find_scene("scene", tmp_path) == root


@pytest.mark.parametrize("break_it,message", [
    (lambda a: a[:, :15], r"expected an N x 17 array .*shape \[10, 15\]"),
    (lambda a: np.where(np.arange(17) == 3, np.nan, a), r"row 0 contains NaN or inf"),
    (lambda a: a[:9], r"9 poses but 10 images in .*images_4"),
    (lambda a: np.concatenate([a[:, :15], a[:, 16:], a[:, 15:16]], 1), r"row 0 needs 0 < near < far"),
    (lambda a: a.astype(str), r"expected an N x 17 array of numbers"),
])
def test_malformed_poses_bounds_are_named(tmp_path, break_it, message):
    root = write_llff(tmp_path / "scene")
    np.save(root / "poses_bounds.npy", break_it(np.load(root / "poses_bounds.npy")))
    with pytest.raises(SceneError, match=r"poses_bounds.npy: " + message) as e:
        load_split(root, "train")
    assert "\n" not in str(e.value)
    (root / "poses_bounds.npy").write_bytes(b"not an array")
    with pytest.raises(SceneError, match=r"poses_bounds.npy: not a readable .npy array"):
        load_split(root, "train")


# -- downscaling -----------------------------------------------------------------------------------------------
def test_downscale_8_of_1008_and_any_factor(tmp_path):
    root = write_nerfstudio(tmp_path / "ns", n=2, w=1008, h=16)
    full, eighth = load_split(root, "train"), load_split(root, "train", downscale=8)
    assert eighth.images.stacked().shape == (1, 2, 126, 4) and eighth.cameras.size(0) == (126, 2)
    assert eighth.cameras.fx[0].item() == pytest.approx(full.cameras.fx[0].item() / 8)
    box = torch.nn.functional.avg_pool2d(full.rgba(0).permute(2, 0, 1), 8).permute(1, 2, 0)
    assert torch.allclose(eighth.rgba(0), box, atol=0.5 / 255 + 1e-6)  # 8-bit storage rounds the box average
    fifth = load_split(root, "train", downscale=5)  # 1008 / 5 = 201.6 -> 201, 16 / 5 -> 3
    assert fifth.images.stacked().shape == (1, 3, 201, 4)
    assert fifth.cameras.cx[0].item() == pytest.approx(full.cameras.cx[0].item() * 201 / 1008)
    with pytest.raises(SceneError, match=r"--downscale must be a positive integer or 'auto', got 0"):
        load_split(root, "train", downscale=0)


def test_downscale_auto_keeps_the_long_side_within_1600(tmp_path, capsys):
    root = write_nerfstudio(tmp_path / "ns", n=2, w=3300, h=8)
    split = load_split(root, "train", downscale="auto")
    assert split.images.stacked().shape == (1, 2, 1100, 4)  # factor 3: 3300 / 2 = 1650 is still too long
    assert "--downscale auto: images of 3300x8 train at 1100x2 (factor 3" in capsys.readouterr().out
    assert load_split(root, "train").images.size(0)[0] == 3300  # nerfstudio scenes default to full size


def test_memory_check_counts_the_downscaled_size_and_its_advice_works(tmp_path, monkeypatch):
    import scenes.io

    root = write_nerfstudio(tmp_path / "ns", n=8, w=64, h=48)
    monkeypatch.setattr(scenes.io, "available_bytes", lambda: 50_000)  # 7 images of 64x48 need 86 kB in 8 bits
    with pytest.raises(SceneError, match=r"7 images of 64x48 need about .* pass --downscale 2 or larger"):
        load_split(root, "train")
    assert load_split(root, "train", downscale=2).images.stacked().shape == (7, 24, 32, 4)


# -- registry and nerfstudio's applied_transform ----------------------------------------------------------------
def test_unknown_folder_lists_every_format(tmp_path):
    with pytest.raises(SceneError, match=r"none of transforms_train.json .*transforms.json .*COLMAP.*poses_bounds.npy"):
        load_split(tmp_path, "train")


def test_nerfstudio_applied_transform_is_folded_into_the_recorded_frame(tmp_path):
    root = write_nerfstudio(tmp_path / "ns", n=8)
    meta = json.loads((root / "transforms.json").read_text())
    applied = np.array([[0.0, 1.0, 0.0, 0.5], [1.0, 0.0, 0.0, -1.0], [0.0, 0.0, -1.0, 2.0]])  # ns-process-data's
    meta["applied_transform"] = applied.tolist()
    original = np.random.default_rng(4).normal(0, 0.3, (50, 3)) + [0.4, 0.0, 0.0]  # points before applied_transform
    colors = np.random.default_rng(5).integers(0, 255, (50, 4)).astype(np.uint8)
    (root / "sparse_pc.ply").write_bytes(trimesh.PointCloud(original @ applied[:, :3].T + applied[:, 3], colors=colors)
                                         .export(file_type="ply"))
    meta["ply_file_path"] = "sparse_pc.ply"
    (root / "transforms.json").write_text(json.dumps(meta))
    split = load_split(root, "train")
    # a camera centre in the frame before applied_transform lands where the split's camera is, and so do points
    before = np.linalg.solve(applied[:, :3], np.array(meta["frames"][1]["transform_matrix"])[:3, 3] - applied[:, 3])
    assert np.allclose(to_world(split, before[None])[0], split.cameras.centers[0].numpy(), atol=1e-5)
    assert np.allclose(to_world(split, original), split.points.numpy(), atol=1e-5)
    assert np.array_equal(split.point_colors.numpy(), colors[:, :3])
    assert ((split.points >= split.aabb[0]) & (split.points <= split.aabb[1])).all(1).float().mean() > 0.9
    (root / "sparse_pc.ply").unlink()
    with pytest.raises(SceneError, match=r"sparse_pc.ply: point cloud file not found \(named by .*transforms.json"):
        load_split(root, "train")


def test_nerfstudio_fisheye(tmp_path):
    root = write_nerfstudio(tmp_path / "ns", n=2, camera_model="OPENCV_FISHEYE", k3=0.01, k4=-0.001)
    split = load_split(root, "train")
    assert split.cameras.fisheye
    assert torch.allclose(split.cameras.distortion[0], torch.tensor([0.1, -0.02, 0.01, -0.001]))
