"""Images of different sizes in one split: a COLMAP workspace whose two cameras (written by pycolmap) have
different sizes, and a nerfstudio transforms.json with per-frame ``w``/``h``, load with each image at its
camera's size, give each pixel its own camera's ray, train (hash grid and Gaussians, through ``fields train``)
and evaluate every held-out view at its own size; masks keep exactly their pixels out of the training rays."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pycolmap
import pytest
import torch
import trimesh
from rich.console import Console

from conftest import write_nerfstudio
from fields.cli import main, run_viewer
from fields.export.visibility import seen_faces
from fields.run.folder import load_run
from fields.training.gaussian_distill import joined
from fields.training.steps import TrainingRays
from scenes import Cameras, SceneSplit, image_rays, load_split, pixel_rays
from scenes.images import Images
from scenes.scene import points_in_view
from scenes.undistort import undistorted
from test_colmap_llff import to_world, write_colmap
from test_masks import keep_right_half, masked_nerfstudio
from ws_client import ViserTab

SIZES = [(24, 16), (18, 26)]  # (width, height) of the two cameras: landscape and portrait
N = 9  # images 0-4 use camera 1, 5-8 camera 2; images 0 and 8 are held out, one of each size


@pytest.fixture
def workspace(tmp_path) -> Path:
    return write_colmap(tmp_path / "ws", "PINHOLE", text=False, n=N, sizes=SIZES, cameras=2)


def camera_size(i: int) -> tuple[int, int]:
    """(width, height) of image ``i`` of the workspace."""
    return SIZES[i * 2 // N]


def test_colmap_cameras_of_two_sizes_load_each_with_its_own_rays(workspace):
    split = load_split(workspace, "train")  # images 1-7: both cameras
    rec = pycolmap.Reconstruction(workspace / "sparse" / "0")
    assert [split.images.size(k) for k in range(len(split))] == [camera_size(i) for i in range(1, 8)]
    pixels = sum(w * h for w, h in map(camera_size, range(1, 8)))
    assert not split.images.uniform and split.images.pixels.shape == (pixels, 4)  # one buffer, no padding
    for k, i in enumerate(range(1, 8)):
        image, cam = rec.images[i + 1], rec.cameras[rec.images[i + 1].camera_id]
        assert split.cameras.size(k) == (cam.width, cam.height) == camera_size(i)
        raw = iio.imread(workspace / "images" / image.name)
        assert torch.equal(split.images[k][..., :3], torch.from_numpy(raw))
        # the pinhole formula with this image's own camera, at pixels up to its far corner
        fx, fy, cx, cy = cam.params
        px, py = torch.tensor([0.5, cam.width - 0.5, 3.25]), torch.tensor([0.5, cam.height - 0.5, 9.75])
        opencv = np.stack([(px.numpy() - cx) / fx, (py.numpy() - cy) / fy, np.ones(3)], 1)
        world = opencv @ image.cam_from_world().rotation.matrix()  # R^T d, row-wise
        centre = image.projection_center()
        expected = to_world(split, world + centre) - to_world(split, centre[None])
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        _, dirs = pixel_rays(split.cameras, torch.full((3,), k), px, py)
        assert np.allclose(dirs.numpy(), expected, atol=1e-5), i
        _, grid = image_rays(split.cameras, k)
        assert grid.shape == (cam.height, cam.width, 3)
        assert torch.allclose(grid[-1, -1], dirs[1], atol=1e-6)


def test_training_rays_map_flat_indices_to_each_images_pixels(workspace):
    split = load_split(workspace, "train")
    images, n = split.images, len(split)
    rays = TrainingRays(split)
    assert len(rays) == images.pixels.shape[0]
    # each image's first pixel is its top-left corner, its last the bottom-right one
    image, x, y = images.locate(torch.cat([images.offsets[:-1], images.offsets[1:] - 1]))
    assert torch.equal(image, torch.arange(n).repeat(2))
    assert torch.equal(x, torch.cat([torch.zeros(n, dtype=torch.long), images.widths - 1]))
    assert torch.equal(y, torch.cat([torch.zeros(n, dtype=torch.long), images.heights - 1]))
    idx = torch.randint(0, len(rays), (200,), generator=torch.Generator().manual_seed(0))
    image, x, y = images.locate(idx)
    _, dirs = rays.rays(idx)
    colors = rays.colors(idx)
    for k in range(len(idx)):
        i, xi, yi = int(image[k]), int(x[k]), int(y[k])
        assert torch.allclose(dirs[k], image_rays(split.cameras, i)[1][yi, xi], atol=1e-6)
        assert torch.equal(colors[k], split.rgba(i)[yi, xi])


def test_downscale_applies_to_each_image(workspace):
    full, half = load_split(workspace, "train", downscale=1), load_split(workspace, "train", downscale=2)
    for k in range(len(full)):
        (w, h), (w2, h2) = full.cameras.size(k), half.cameras.size(k)
        assert (w2, h2) == (w // 2, h // 2) == half.images.size(k)
        assert half.cameras.fx[k].item() == pytest.approx(full.cameras.fx[k].item() / 2)
        assert half.cameras.cy[k].item() == pytest.approx(full.cameras.cy[k].item() / 2)


def test_masks_of_different_sizes_remove_exactly_their_pixels(workspace):
    (workspace / "masks").mkdir()
    for i, name in enumerate(sorted(p.name for p in (workspace / "images").iterdir())):
        w, h = camera_size(i)
        iio.imwrite(workspace / "masks" / f"{name}.png", keep_right_half(h, w, i))
    train = load_split(workspace, "train")
    for k, i in enumerate(range(1, 8)):
        w, h = camera_size(i)
        assert torch.equal(train.masks[k], torch.from_numpy(keep_right_half(h, w, i) > 0))
    rays = TrainingRays(train)
    kept = train.masks.pixels.nonzero()[:, 0]
    assert len(rays) == len(kept) == sum(int(train.masks[k].sum()) for k in range(len(train)))
    drawn = rays.draw(20_000, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == set(kept.tolist())  # every kept pixel drawn at least once, no other
    image, x, y = train.images.locate(drawn[:300])
    assert all(bool(train.masks[int(i)][int(b), int(a)]) for i, a, b in zip(image, x, y))


def trained(workspace: Path, out: Path, *args: str) -> Path:
    """The run folder ``fields train`` makes for the workspace with ``args``."""
    main(["train", "--data", str(workspace), "--output-dir", str(out), "--max-steps", "4", "--quiet", *args])
    (run,) = out.glob("*/*/*")
    return run


def assert_evaluated_at_own_sizes(run: Path) -> None:
    """``fields eval`` scores both held-out views (one of each size) and draws each grid at its view's size."""
    main(["eval", str(run), "--quiet"])
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["views"] == 2 and [v["view"] for v in metrics["per_view"]] == [0, 1]
    assert all(np.isfinite(v["psnr"]) and np.isfinite(v["ssim"]) for v in metrics["per_view"])
    for view, i in enumerate((0, N - 1)):  # gt | render | error | depth, side by side
        w, h = camera_size(i)
        (grid,) = (run / "eval").glob(f"test-step-*/view_{view:03d}.png")
        assert iio.imread(grid).shape[:2] == (h, 4 * w)


def test_hashgrid_trains_evaluates_and_exports_on_mixed_sizes(workspace, tmp_path):
    run = trained(workspace, tmp_path / "out", "--field", "hashgrid")
    record = load_run(run).record.cameras  # cameras.json keeps each camera's size
    assert [record.size(k) for k in range(len(record))] == [camera_size(i) for i in range(1, 8)]
    assert_evaluated_at_own_sizes(run)
    main(["export", "video", str(run), "--seconds", "0.25", "--fps", "8", "--quiet",
          "--output", str(tmp_path / "orbit.mp4")])
    w, h = camera_size(1)  # a derived path takes the first training camera's intrinsics and size
    assert iio.imread(tmp_path / "orbit.mp4").shape[1:3] == (h, w)
    main(["export", "pointcloud", str(run), "--num-points", "100", "--min-opacity", "0.001", "--quiet",
          "--output", str(tmp_path / "points.ply")])  # pixels drawn from every training image at its own size
    assert 0 < len(trimesh.load(tmp_path / "points.ply").vertices) <= 100  # up to 100 (a faint 4-step field)


def test_mesh_faces_count_as_seen_inside_each_cameras_own_image():
    """Mesh export keeps the faces some training camera sees: each camera's own width and height bound its
    image. Two cameras at one pose (24x16 and 18x26 px, centred principal points, f = 10 px) looking down -Z at
    three small faces 5 units away: 10 px right of centre (inside the wide image only), 11 px below (inside the
    tall one only), and both (inside neither)."""
    offsets = [(10, 0), (0, 11), (10, 11)]  # pixels right of / below the image centre
    tri = np.array([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.0, 0.05, 0.0]])  # normal +Z, towards the cameras
    vertices = np.concatenate([tri + [dx * 0.5, -dy * 0.5, -5.0] for dx, dy in offsets])  # depth 5 / f 10 px
    faces = np.arange(9).reshape(3, 3)
    c2w = torch.eye(4).repeat(2, 1, 1)
    cams = Cameras(c2w, torch.full((2,), 10.0), torch.full((2,), 10.0), torch.tensor([12.0, 9.0]),
                   torch.tensor([8.0, 13.0]), torch.tensor([24, 18]), torch.tensor([16, 26]))
    assert seen_faces(vertices, faces, cams, tolerance=1e-3).tolist() == [True, True, False]
    assert seen_faces(vertices, faces, cams[1], tolerance=1e-3).tolist() == [False, True, False]


def test_viewer_draws_each_training_camera_with_its_own_aspect(workspace, tmp_path):
    run = load_run(trained(workspace, tmp_path / "out", "--field", "hashgrid"))
    viewer = run_viewer(run, port=0, console=Console(file=io.StringIO()))
    tab = ViserTab(viewer.url, 64, 64)
    try:
        assert tab.wait_gui(lambda t: sum(n.startswith("/train_cameras/") for n in t.scene) == N - 2, 10)
        for k, i in enumerate(range(1, N - 1)):  # the training images
            w, h = camera_size(i)
            props = tab.scene[f"/train_cameras/{k:03d}"]
            assert props["aspect"] == pytest.approx(w / h)
            assert props["fov"] == pytest.approx(2 * math.atan(0.5 * h / run.record.cameras.fy[k].item()))
    finally:
        tab.close()
        viewer.close()


def test_gaussians_train_whole_cropped_and_coarse_images_of_mixed_sizes(workspace, tmp_path):
    run = trained(workspace, tmp_path / "out", "--field", "gaussians", "--gaussians.crop", "16",
                  "--gaussians.coarse-levels", "1", "--gaussians.coarse-every", "2")
    assert_evaluated_at_own_sizes(run)


def test_nerfstudio_frames_with_their_own_w_and_h(tmp_path):
    root = write_nerfstudio(tmp_path / "ns", n=8, w=12, h=10)
    meta = json.loads((root / "transforms.json").read_text())
    rng = np.random.default_rng(5)
    for frame in meta["frames"][1::2]:  # every other frame from a portrait camera of its own
        frame.update({"w": 8, "h": 14, "fl_x": 9.0, "fl_y": 9.5, "cx": 4.0, "cy": 7.0})
        iio.imwrite(root / frame["file_path"], rng.integers(0, 255, (14, 8, 3), dtype=np.uint8))
    (root / "transforms.json").write_text(json.dumps(meta))
    train = load_split(root, "train")  # frames 1..7
    for k, i in enumerate(range(1, 8)):
        size = (8, 14) if i % 2 else (12, 10)
        assert train.cameras.size(k) == train.images.size(k) == size
        assert train.cameras.cx[k].item() == (4.0 if i % 2 else 6.0)
        raw = iio.imread(root / meta["frames"][i]["file_path"])
        assert torch.equal(train.images[k][..., :3], torch.from_numpy(raw))
        assert image_rays(train.cameras, k)[1].shape == (size[1], size[0], 3)
    half = load_split(root, "train", downscale=2)
    assert [half.images.size(k) for k in range(2)] == [(4, 7), (6, 5)]


def test_gaussian_distillation_joins_undistorted_images_and_teacher_views_of_another_size(tmp_path):
    train = undistorted(load_split(masked_nerfstudio(tmp_path / "ns", w=12, h=10), "train"))  # an OpenCV lens
    assert not bool(train.masks.pixels.all())
    views = SceneSplit("ns", "teacher", Cameras.from_fov(train.cameras.c2w[:2], 16, 8, 0.8),
                       Images.stack([torch.zeros(8, 16, 4, dtype=torch.uint8)] * 2), train.aabb)
    both = joined(train, views)
    assert [both.cameras.size(i) for i in range(len(both))] == [(12, 10)] * len(train) + [(16, 8)] * 2
    kept = train.masks.pixels
    assert torch.equal(both.masks.pixels[:len(kept)], kept) and bool(both.masks.pixels[len(kept):].all())
    with pytest.raises(ValueError, match="fisheye and pinhole"):
        Cameras.cat([Cameras(views.cameras.c2w, *views.cameras.fx[None].repeat(4, 1), 16, 8, fisheye=True),
                     views.cameras])


def test_points_in_view_take_each_pixels_colour_from_its_own_image(workspace):
    split = load_split(workspace, "train")
    _, colors = points_in_view(split, 500, torch.Generator().manual_seed(1))
    draws = torch.Generator().manual_seed(1)  # the same draws: image, then x and y within its own size
    image = torch.randint(0, len(split), (500,), generator=draws)
    px = torch.rand(500, generator=draws) * split.cameras.width[image]
    py = torch.rand(500, generator=draws) * split.cameras.height[image]
    for k in range(500):
        assert torch.equal(colors[k], split.images[int(image[k])][int(py[k]), int(px[k]), :3])
