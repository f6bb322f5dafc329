"""Export: meshes (against the procedural scene's true surface), videos read back, point clouds, camera paths
and the CLI's errors."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from fields.backends.base import Field
from fields.cli import main, run_viewer
from fields.export import ExportError
from scenes.camera_paths import CameraPathError, derived_path, interpolate, load_camera_path, orbit, scene_frame, spiral
from fields.export.mesh import MeshSettings, density_volume, extract_mesh, marching_cubes
from fields.export.surface_metrics import chamfer_fscore, sample_surface
from fields.export.visibility import seen_faces
from renderers.model import VolumeModel
from renderers.occupancy import OccupancyGrid
from renderers.render import RenderConfig
from scenes import procedural
from scenes.cameras import Cameras

# Bars for a run trained 200 tiny steps (measured: Chamfer 0.035, median point distance 0.041). A misplaced or
# box-filling result scores several times worse: points spread uniformly over the box lie 0.39 from the surface
# (median).
TINY_RUN_CHAMFER = 0.06
TINY_RUN_POINT_DISTANCE = 0.06


class SDFField(Field):
    """A real field whose density is a sharp sigmoid of the procedural scene's SDF and whose colour is its
    albedo: an exact reference for the mesh exporter, independent of training."""

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return 1000.0 * torch.sigmoid(-procedural.sdf(x) / 0.003)

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.density(x), procedural.albedo(x)


class HollowField(SDFField):
    """The procedural solids as shells 0.1 thick with empty insides: what a field that was never supervised
    inside its objects looks like. Marching cubes meshes the inner walls too, which no camera can see."""

    def density(self, x: torch.Tensor) -> torch.Tensor:
        d = procedural.sdf(x)
        return 1000.0 * torch.sigmoid(-d / 0.003) * torch.sigmoid((d + 0.1) / 0.003)


def sdf_field(cls: type[SDFField] = SDFField) -> tuple[SDFField, OccupancyGrid]:
    aabb = torch.tensor(procedural.AABB)
    field, grid = cls(aabb), OccupancyGrid(aabb, 32)
    grid.update(field.density, RenderConfig().step_size(aabb))
    return field, grid


def procedural_cameras(n: int = 16, size: int = 40) -> Cameras:
    return Cameras.from_fov(procedural.camera_poses(n, 0), size, size, procedural.FOV_X)


def training_cameras() -> Cameras:
    """The procedural scene's training poses (at a small image size)."""
    return procedural_cameras(procedural.SPLITS["train"], 50)


def test_mesh_of_an_exact_field_matches_the_true_surface_with_its_colours():
    field, grid = sdf_field()
    model = VolumeModel(field, grid, RenderConfig())
    _, threshold = extract_mesh(model, MeshSettings(resolution=16, seen_only=False), None,
                                show_progress=False)
    assert threshold == pytest.approx(-math.log(0.95) / RenderConfig().step_size(field.aabb))  # 5% per step
    # At the sigmoid's midpoint the iso-surface is the true surface, so any error is the exporter's; keeping
    # only the faces the training cameras see must not cost any of it.
    mesh, _ = extract_mesh(model, MeshSettings(resolution=96, threshold=500.0), training_cameras(),
                           show_progress=False)
    m = chamfer_fscore(sample_surface(mesh, 50000), procedural.surface_points(50000).numpy(), tau=0.02)
    assert m["fscore"] > 0.99 and m["chamfer"] < 0.015, m
    v = torch.tensor(mesh.vertices, dtype=torch.float32)
    outward = (torch.tensor(mesh.vertex_normals, dtype=torch.float32) * procedural.normals(v)).sum(-1)
    assert outward.mean() > 0.95  # faces are wound so that normals point out of the object
    colors = mesh.visual.vertex_colors[:, :3].astype(np.float32) / 255
    assert np.abs(colors - procedural.albedo(v).numpy()).mean() < 0.05


def test_faces_no_camera_sees_are_dropped():
    """A hollow field's inner walls (0.1 inside the true surface) are meshed, then found unseen; the outer
    surface is seen. (extract_mesh applies this check in the exact-field test above.)"""
    field, grid = sdf_field(HollowField)
    vertices, faces = marching_cubes(density_volume(VolumeModel(field, grid, RenderConfig()), 64), 500.0, field.aabb)
    seen = seen_faces(vertices, faces, training_cameras(), tolerance=2 * 2 / 63)
    depth = procedural.sdf(torch.tensor(vertices[faces].mean(1), dtype=torch.float32)).numpy()
    inner, outer = depth < -0.05, depth > -0.03
    assert inner.mean() > 0.15  # the inner walls (a fifth of the area) are there
    assert seen[inner].mean() < 0.005 and seen[outer].mean() > 0.99


def test_mesh_of_a_trained_run_loads_back_inside_the_box_near_the_true_surface(trained_run, tmp_path):
    out = tmp_path / "mesh.ply"
    main(["export", "mesh", str(trained_run), "--resolution", "64", "--output", str(out), "--quiet"])
    mesh = trimesh.load(out, process=False)
    lo, hi = np.array(procedural.AABB)
    assert len(mesh.faces) > 1000
    assert (mesh.vertices >= lo - 1e-6).all() and (mesh.vertices <= hi + 1e-6).all()
    colors = mesh.visual.vertex_colors
    assert colors.shape == (len(mesh.vertices), 4) and colors[:, :3].std() > 5  # real colours, not a constant
    m = chamfer_fscore(sample_surface(mesh, 50000), procedural.surface_points(50000).numpy(), tau=0.02)
    assert m["chamfer"] < TINY_RUN_CHAMFER, m


@pytest.mark.parametrize("fmt", ["obj", "glb"])
def test_other_mesh_formats_load_back_with_colours(fmt, tmp_path):
    field, grid = sdf_field()
    settings = MeshSettings(resolution=32, target_faces=2000, seen_only=False)
    mesh, _ = extract_mesh(VolumeModel(field, grid, RenderConfig()), settings, None, show_progress=False)
    assert len(mesh.faces) <= 2000
    from fields.export.mesh import write_mesh

    write_mesh(mesh, tmp_path / f"m.{fmt}")
    back = trimesh.load(tmp_path / f"m.{fmt}", force="mesh", process=False)
    assert len(back.faces) == len(mesh.faces)
    colors = back.visual.vertex_colors
    assert colors.shape[0] == len(back.vertices) and colors[:, :3].std() > 5
    x, y, z = mesh.vertices.T
    # glTF is y-up: our z-up world goes to (x, z, -y); the torus (lowest in z) is lowest in y there.
    expected = np.stack([x, z, -y], 1) if fmt == "glb" else mesh.vertices
    assert np.allclose(back.vertices, expected, atol=1e-5)


def test_video_reads_back_with_the_right_frames_and_size(trained_run, tmp_path):
    """The file named by --output is the rgb video; the depth video goes beside it with a suffix."""
    main(["export", "video", str(trained_run), "--path", "spiral", "--seconds", "0.5", "--fps", "10",
          "--resolution", "24", "--outputs", "rgb,depth", "--output", str(tmp_path / "orbit.mp4"), "--quiet"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orbit-depth.mp4", "orbit.mp4"]
    rgb, depth = iio.imread(tmp_path / "orbit.mp4"), iio.imread(tmp_path / "orbit-depth.mp4")
    assert rgb.shape == depth.shape == (5, 24, 24, 3)
    assert rgb.std() > 10  # the objects are visible, not a blank background
    # depth is colour-mapped: its frames differ from the rgb ones
    assert np.abs(rgb.astype(np.float32) - depth.astype(np.float32)).mean() > 10


def test_video_writes_one_rgb_file_by_default(trained_run, tmp_path):
    main(["export", "video", str(trained_run), "--seconds", "0.2", "--fps", "10", "--resolution", "16",
          "--output", str(tmp_path / "clip"), "--quiet"])  # no suffix: .mp4 is added
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    assert iio.imread(tmp_path / "clip.mp4").shape == (2, 16, 16, 3)
    (tmp_path / "folder").mkdir()
    main(["export", "video", str(trained_run), "--seconds", "0.2", "--fps", "10", "--resolution", "16",
          "--output", str(tmp_path / "folder"), "--quiet"])
    (video,) = (tmp_path / "folder").iterdir()
    assert video.name.startswith("video-orbit-step-") and video.suffix == ".mp4"


def nerfstudio_path_file(tmp_path, n: int = 3):
    poses = procedural.camera_poses(n, 1)
    meta = {"camera_type": "perspective", "render_height": 20, "render_width": 30, "fps": 12, "seconds": 1,
            "camera_path": [{"camera_to_world": p.reshape(-1).tolist(), "fov": 40.0, "aspect": 1.5} for p in poses]}
    path = tmp_path / "camera_path.json"
    path.write_text(json.dumps(meta))
    return path, poses


def test_nerfstudio_camera_path_is_parsed(tmp_path):
    path, poses = nerfstudio_path_file(tmp_path)
    cam_path = load_camera_path(path)
    cams = cam_path.cameras
    assert torch.allclose(cams.c2w, poses) and cams.size(0) == (30, 20) and cam_path.fps == 12
    assert cams.fy[0].item() == pytest.approx(10 / math.tan(math.radians(20)))  # fov is vertical, in degrees
    assert cams.cx[0].item() == 15 and cams.cy[0].item() == 10


def test_nerfstudio_path_maps_back_through_the_dataparser_transform(tmp_path):
    """A path made in nerfstudio's oriented, centred and scaled frame lands on our cameras: the training poses of a
    nerfstudio-format scene, sent through a nerfstudio-style dataparser transform and back, are unchanged."""
    from conftest import write_nerfstudio
    from scenes.nerfstudio import load_nerfstudio

    root = write_nerfstudio(tmp_path / "scene")
    frames = json.loads((root / "transforms.json").read_text())["frames"]
    split = load_nerfstudio(root, "train")
    by_file = {str(root / f["file_path"]): torch.tensor(f["transform_matrix"], dtype=torch.float64) for f in frames}
    dataset = torch.stack([by_file[f] for f in split.file_paths])
    a, b = 0.7, -0.4  # nerfstudio's orientation: some rotation, a shift, then its scale
    rot = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=torch.float64)
    rot = rot @ torch.tensor([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]],
                             dtype=torch.float64)
    transform = torch.cat([rot, torch.tensor([[0.3], [-1.2], [0.5]], dtype=torch.float64)], 1)
    scale = 0.37
    ns = torch.cat([transform, torch.tensor([[0.0, 0, 0, 1]], dtype=torch.float64)]) @ dataset
    ns[:, :3, 3] *= scale
    (tmp_path / "dataparser_transforms.json").write_text(json.dumps({"transform": transform.tolist(), "scale": scale}))
    meta = {"render_height": 10, "render_width": 12, "camera_path": [
        {"camera_to_world": p.reshape(-1).tolist(), "fov": 50.0} for p in ns]}
    (tmp_path / "path.json").write_text(json.dumps(meta))
    cams = load_camera_path(tmp_path / "path.json", tmp_path / "dataparser_transforms.json", split.from_dataset,
                            split.from_dataset_rotation).cameras
    assert torch.allclose(cams.c2w, split.cameras.c2w, atol=1e-5)
    assert not torch.allclose(load_camera_path(tmp_path / "path.json").cameras.c2w, split.cameras.c2w, atol=1e-2)
    (tmp_path / "bad.json").write_text('{"transform": [[1, 0, 0]], "scale": 1}')
    with pytest.raises(CameraPathError, match="'transform' must be 3x4"):
        load_camera_path(tmp_path / "path.json", tmp_path / "bad.json")


def test_video_from_a_camera_path_file_renders_its_frames(trained_run, tmp_path):
    path, _ = nerfstudio_path_file(tmp_path)
    main(["export", "video", str(trained_run), "--path", str(path), "--outputs", "rgb",
          "--output", str(tmp_path), "--quiet"])
    (video,) = tmp_path.glob("video-camera_path-step-*.mp4")
    assert iio.imread(video).shape == (3, 20, 30, 3)


def test_derived_paths_circle_the_scene_centre():
    cams = procedural_cameras()
    frame = scene_frame(cams)
    assert frame.centre.norm() < 1e-3 and frame.radius == pytest.approx(procedural.RADIUS, rel=1e-4)
    assert frame.up[2] > 0.8  # the procedural cameras are mostly above, with z up
    for poses in (orbit(cams, 12), spiral(cams, 12)):
        eyes = poses[:, :3, 3]
        assert torch.allclose(eyes.norm(dim=-1), torch.full((12,), procedural.RADIUS), rtol=1e-3)
        looking = -poses[:, :3, 2]  # each camera looks at the centre
        assert torch.allclose((looking * -eyes).sum(-1), eyes.norm(dim=-1), rtol=1e-4)
    path = interpolate(cams, 31, keyframes=4)
    assert torch.allclose(path[0], cams.c2w[0], atol=1e-5) and torch.allclose(path[-1], cams.c2w[-1], atol=1e-5)
    steps = (path[1:, :3, 3] - path[:-1, :3, 3]).norm(dim=-1)
    assert steps.max() < 4 * steps.mean()  # smooth: no jumps between frames


def forward_cameras(spread: tuple[float, float, float], n: int = 30, seed: int = 0) -> Cameras:
    """``n`` cameras looking down +Y (up +Z) from offsets drawn uniformly in +-``spread`` around (0.3, -3, 0.1),
    each turned a little off the mean direction (a hand-held forward-facing capture)."""
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, 3] = torch.tensor([0.3, -3.0, 0.1]) + (2 * torch.rand(n, 3, generator=g) - 1) * torch.tensor(spread)
    for i, yaw in enumerate((torch.rand(n, generator=g) - 0.5) * 0.1):
        c, s_ = math.cos(yaw), math.sin(yaw)
        c2w[i, :3, :3] = torch.tensor([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]]) @ torch.tensor(
            [[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # right +X, up +Z, looking down +Y, then a small yaw
    return Cameras.from_fov(c2w, 40, 30, 0.8)


def test_the_forward_spiral_stays_in_front_and_looks_at_the_focus():
    """NeRF's LLFF spiral: every pose looks at the point the focus depth ahead of the mean pose (from the near/far
    bounds) with the mean up roughly up; it circles the mean camera centre with the 90th percentile of the
    cameras' offsets along each axis of the mean pose, so wider captures spiral wider; forward-facing cameras
    get it by default, object captures the orbit."""
    from scenes.camera_paths import default_path, focus_depth, forward_spiral

    assert focus_depth(1.8, 4.5) == pytest.approx(1 / (0.25 / (0.9 * 1.8) + 0.75 / (5 * 4.5)))
    cams = forward_cameras((0.4, 0.05, 0.2))
    pose = cams.mean_pose().float()
    poses = forward_spiral(cams, 40, (1.8, 4.5))
    eyes = poses[:, :3, 3]
    focus = pose[:3, 3] - focus_depth(1.8, 4.5) * pose[:3, 2]
    looking = torch.nn.functional.normalize(focus - eyes, dim=-1)
    assert torch.allclose(-poses[:, :3, 2], looking, atol=1e-5)
    assert ((poses[:, :3, 1] * pose[:3, 1]).sum(-1) > 0.99).all()
    local = (eyes - pose[:3, 3]) @ pose[:3, :3]  # in the mean pose's frame: right, up, back
    want = np.percentile(np.abs(((cams.centers - pose[:3, 3]) @ pose[:3, :3]).numpy()), 90, axis=0)
    assert np.allclose(local.abs().amax(0).numpy(), want, rtol=1e-4)  # cos, sin and sin(t / 2) reach 1 on frames
    assert want[0] > 3 * want[2]  # the radii follow the spread per axis
    wide = forward_cameras((0.8, 0.05, 0.2))
    wide_pose = wide.mean_pose().float()
    wider = (forward_spiral(wide, 40, (1.8, 4.5))[:, :3, 3] - wide_pose[:3, 3]) @ wide_pose[:3, :3]
    assert wider[:, 0].abs().max() > 1.7 * local[:, 0].abs().max()
    assert default_path(cams) == "forward-spiral" and default_path(procedural_cameras()) == "orbit"
    assert default_path(procedural_cameras(), ndc=True) == "forward-spiral"
    with pytest.raises(CameraPathError, match="near and far bounds"):
        derived_path(cams, "forward-spiral", 4)


def test_point_cloud_lies_on_the_surface(trained_run, tmp_path):
    out = tmp_path / "points.ply"
    main(["export", "pointcloud", str(trained_run), "--num-points", "2000", "--output", str(out), "--quiet"])
    cloud = trimesh.load(out)
    assert len(cloud.vertices) == 2000 and cloud.colors.shape == (2000, 4)
    dist = procedural.sdf(torch.tensor(cloud.vertices, dtype=torch.float32)).abs()
    assert dist.median() < TINY_RUN_POINT_DISTANCE


@pytest.mark.parametrize("args, message", [
    (["video", "{run}", "--path", "zigzag"], "--path 'zigzag': unknown camera path"),
    (["video", "{run}", "--resolution", "0"], "--resolution must be at least 2"),
    (["video", "{run}", "--outputs", "rgb,normals"], "unknown output(s) normals"),
    (["video", "{run}", "--path", "{tmp}/missing.json"], "camera path file not found"),
    (["mesh", "{run}", "--resolution", "0"], "mesh resolution must be at least 2"),
    (["mesh", "{tmp}/no-run"], "not a run folder"),
    (["pointcloud", "{tmp}/no-run"], "not a run folder"),
])
def test_bad_arguments_give_one_clear_line(args, message, trained_run, tmp_path, capsys):
    argv = ["export"] + [a.format(run=trained_run, tmp=tmp_path) for a in args] + ["--quiet"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    out = capsys.readouterr().out
    assert message in " ".join(out.split()), out


def test_bad_camera_path_files_name_the_problem(tmp_path):
    bad = tmp_path / "bad.json"
    for text, message in [("{", "not valid JSON"), ('{"camera_path": []}', "non-empty 'camera_path'"),
                          ('{"camera_path": [{"fov": 50}], "render_width": 4, "render_height": 4}',
                           "camera_path[0] needs 'camera_to_world'")]:
        bad.write_text(text)
        with pytest.raises(CameraPathError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_camera_path(bad)
    with pytest.raises(CameraPathError, match="unknown camera path"):
        derived_path(procedural_cameras(), "zigzag", 4)


def test_a_run_whose_scene_is_gone_still_exports_and_views(procedural_root, tmp_path, capsys):
    """A run folder copied without its training images: the cameras, box and background come from its
    cameras.json, so export and view work; only eval needs the images (and says the folder is missing)."""
    import io
    import shutil

    from rich.console import Console

    from conftest import tiny_config
    from fields.run.folder import load_run
    from fields.training.trainer import Trainer
    from fields.cli import run_viewer

    scene = tmp_path / "scene"
    shutil.copytree(procedural_root, scene)
    cfg = tiny_config(max_steps=30)
    cfg.scene.data = scene
    run_dir = tmp_path / "run"
    trainer = Trainer(cfg, run_dir, Console(file=io.StringIO()))
    trainer.train(show_progress=False)
    train_cams = trainer.data.cameras
    shutil.rmtree(scene)

    record = load_run(run_dir).record
    assert torch.equal(record.cameras.c2w, train_cams.c2w) and torch.equal(record.cameras.fx, train_cams.fx)
    assert torch.equal(record.cameras.width, train_cams.width) and torch.equal(record.cameras.height, train_cams.height)
    assert torch.equal(record.aabb, trainer.data.aabb.float()) and record.background == tuple(cfg.scene.background)
    assert record.name == "scene"

    out = tmp_path / "out"
    main(["export", "video", str(run_dir), "--seconds", "0.2", "--fps", "10", "--resolution", "16",
          "--output", str(out / "orbit.mp4"), "--quiet"])
    assert iio.imread(out / "orbit.mp4").shape == (2, 16, 16, 3)
    main(["export", "pointcloud", str(run_dir), "--num-points", "200", "--min-opacity", "0.1",
          "--output", str(out / "points.ply"), "--quiet"])
    assert len(trimesh.load(out / "points.ply").vertices) == 200
    main(["export", "mesh", str(run_dir), "--resolution", "32", "--threshold", "0.1", "--output", str(out / "mesh.ply"),
          "--quiet"])  # 30 steps: a faint field, so a low threshold
    assert len(trimesh.load(out / "mesh.ply").faces) > 0
    viewer = run_viewer(load_run(run_dir), port=0, console=Console(file=io.StringIO()))
    viewer.close()

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["eval", str(run_dir), "--quiet"])
    assert e.value.code == 2 and f"{scene}: scene folder not found" in " ".join(capsys.readouterr().out.split())


def test_runs_without_a_camera_record_load_it_from_their_scene(trained_run, tmp_path):
    """Run folders trained before cameras.json existed get the same record from the scene's training split."""
    import shutil

    from fields.run.folder import load_run

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("exports", "eval"))
    stored = load_run(run_dir).record
    (run_dir / "cameras.json").unlink()
    rebuilt = load_run(run_dir).record
    assert torch.equal(stored.cameras.c2w, rebuilt.cameras.c2w) and torch.equal(stored.cameras.cy, rebuilt.cameras.cy)
    assert torch.equal(stored.aabb, rebuilt.aabb) and stored.background == rebuilt.background


@pytest.mark.parametrize("edit, message", [
    (lambda r: "{", "not a readable JSON camera record"),
    (lambda r: {**r, "version": 7}, "not a fields camera record"),
    (lambda r: {**r, "c2w": r["c2w"][0]}, "'c2w' must be a N x 4 x 4 array"),
    (lambda r: {**r, "fx": r["fx"][:-1]}, "'fx' must be a"),
    (lambda r: {**r, "width": 0}, "'width' and 'height' must be positive"),
    (lambda r: {**r, "aabb": [r["aabb"][1], r["aabb"][0]]}, "'aabb' must be [min corner, max corner]"),
    (lambda r: {**r, "background": [1, "x", 1]}, "'background' must be a 3 array"),
    (lambda r: {**r, "cy": [float("nan")] * len(r["cy"])}, "'cy' holds NaN"),
    (lambda r: {**r, "from_dataset": {**r["from_dataset"], "rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]]}},
     "'from_dataset.rotation' is not a rotation matrix"),
    (lambda r: {**r, "fisheye": "yes"}, "'fisheye' must be true or false"),
    (lambda r: {**r, "near_far": [2.0, 1.0]}, "'near_far' must be two distances with 0 < near < far"),
    (lambda r: {**r, "points_box": [[1, 1, 1], [0, 0, 0]]}, "'points_box' must be [min corner, max corner]"),
])
def test_a_malformed_camera_record_is_named_in_one_line(edit, message, trained_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("exports", "eval"))
    record = json.loads((run_dir / "cameras.json").read_text())
    changed = edit(record)
    (run_dir / "cameras.json").write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(SystemExit) as e:
        main(["export", "pointcloud", str(run_dir), "--num-points", "10", "--quiet"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 2 and f"{run_dir / 'cameras.json'}: {message}" in out, out


def test_the_camera_record_keeps_lens_and_dataset_frame(tmp_path):
    """A nerfstudio capture (OpenCV distortion, oriented and rescaled by the loader, near/far bounds and SfM points)
    and a fisheye variant come back from cameras.json as they were written (the points as the box of their
    bulk)."""
    import dataclasses

    from conftest import write_nerfstudio
    from fields.run.scene_record import read_scene_record, write_scene_record
    from scenes.nerfstudio import load_nerfstudio
    from scenes.orient import bulk_box

    split = load_nerfstudio(write_nerfstudio(tmp_path / "scene"), "train")
    assert not np.allclose(split.from_dataset_rotation, np.eye(3))  # the loader turned it: a real test
    split = dataclasses.replace(split, near_far=(0.4, 3.5), points=torch.randn(200, 3, generator=torch.Generator()
                                                                                    .manual_seed(0)))
    assert read_scene_record(write_scene_record(tmp_path, dataclasses.replace(split, points=None))).points_box is None
    record = read_scene_record(write_scene_record(tmp_path, split))
    cams, back = split.cameras, record.cameras
    for name in ("c2w", "fx", "fy", "cx", "cy", "distortion"):
        assert torch.equal(getattr(back, name), getattr(cams, name).float()), name
    assert torch.equal(back.width, cams.width) and torch.equal(back.height, cams.height) and not back.fisheye
    assert np.allclose(record.from_dataset[0], split.from_dataset[0]) and record.from_dataset[1] == pytest.approx(
        split.from_dataset[1])
    assert np.allclose(record.from_dataset_rotation, split.from_dataset_rotation, atol=1e-6)
    assert record.near_far == pytest.approx(split.near_far)
    assert torch.allclose(record.points_box, torch.tensor(bulk_box(split.points.numpy()), dtype=torch.float32))
    fisheye = dataclasses.replace(split, cameras=dataclasses.replace(cams, fisheye=True))
    assert read_scene_record(write_scene_record(tmp_path, fisheye)).cameras.fisheye
