"""The gaussians backend: adaptive density control and 3DGS-MCMC's fixed budget, training through the common
Trainer, checkpoints with a changed number of Gaussians, Mip-Splatting's 3-D filter, the 3DGS PLY, point queries,
and seeding Gaussians from a trained field."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import trimesh

from conftest import tiny_config
from fields.run.config import RunConfig, TrainConfig
from fields.evaluation import evaluate
from fields.backends.gaussians import GaussiansConfig
from fields.backends.gaussians.antialiasing import filter_variance, smoothed
from fields.backends.gaussians.density_control import relocated
from fields.backends.gaussians.field import SH_C0
from fields.backends.gaussians.params import PER_GAUSSIAN
from fields.run.folder import load_run
from fields.training.trainer import Trainer
from renderers.splatting import render_gaussians
from scenes import procedural
from scenes.images import Images

TINY_RUN_POINT_DISTANCE = 0.06  # median distance of the trained_run's point cloud to the surface (test_export)
BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def adam_with_state(field) -> torch.optim.Adam:
    """Adam over the field's groups after one step on random gradients, so every row has non-zero moments."""
    opt = torch.optim.Adam(field.param_groups(1e-2), eps=1e-15, fused=True)
    for p in field.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return opt


def assert_state_matches(field, opt):
    for name in PER_GAUSSIAN:
        p = getattr(field, name)
        assert opt.param_groups[[g["name"] for g in opt.param_groups].index(name)]["params"][0] is p
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt.state[p][key].shape == p.shape, (name, key)


def test_density_control_clones_splits_and_prunes_as_configured():
    torch.manual_seed(0)
    cfg = GaussiansConfig(num_init=40, grow_grad2d=1e-3, grow_scale3d=0.05, densify_from=0, densify_every=10,
                          densify_until=100, prune_opacity=0.05, reset_opacity_every=0)
    field = cfg.build(BOX)
    opt = adam_with_state(field)
    with torch.no_grad():
        field.scales[:20] = math.log(0.01)  # small: cloned when their gradient is high
        field.scales[20:] = math.log(0.5)  # large: split
        field.opacities[:] = 0.0
        field.opacities[[5, 25, 35]] = -10.0  # nearly transparent: pruned
    high = torch.tensor([0, 1, 2, 20, 21])  # these get a mean gradient above the threshold
    means2d = torch.zeros(40, 2, requires_grad=True)
    means2d.grad = torch.zeros(40, 2)
    means2d.grad[high] = 2e-3 / 50  # pixels; x (width / 2 = 50) -> 2e-3 in NDC
    info = {"means2d": means2d, "radii": torch.ones(40, dtype=torch.int32), "width": 100, "height": 100}
    kept_moment = opt.state[field.sh0]["exp_avg"][10].clone()  # a Gaussian nothing happens to
    kept_mean = field.means[10].clone()
    parents = field.means.detach()[[20, 21]].clone()

    done = field.control.step(10, opt, info)

    assert done == {"cloned": 3, "split": 2, "pruned": 3}
    assert len(field) == 40 + 3 + 2 - 3  # a split replaces one Gaussian by two
    assert_state_matches(field, opt)
    row = (field.means == kept_mean).all(-1).nonzero()[:, 0]
    assert len(row) == 1 and torch.equal(opt.state[field.sh0]["exp_avg"][row[0]], kept_moment)
    children = field.means[-4:].detach()  # split children come last, and start with zero moments
    assert torch.allclose(field.scales[-4:].exp(), torch.full((4, 3), 0.5 / 1.6))
    assert (children - parents.repeat(2, 1)).norm(dim=-1).max() < 4 * 0.5  # sampled from their parents
    assert opt.state[field.means]["exp_avg"][-4:].abs().sum() == 0
    assert field.grad2d.shape == (len(field),) and field.grad2d.sum() == 0
    for p in field.parameters():  # and the optimizer still steps
        p.grad = torch.randn_like(p)
    opt.step()


def test_density_control_respects_the_cap_and_resets_opacity():
    cfg = GaussiansConfig(num_init=30, grow_grad2d=0.0, densify_from=0, densify_every=5, densify_until=100,
                          reset_opacity_every=5, max_gaussians=35, prune_opacity=0.01)
    field = cfg.build(BOX)
    opt = adam_with_state(field)
    means2d = torch.zeros(30, 2, requires_grad=True)
    means2d.grad = torch.rand(30, 2)
    field.control.step(5, opt, {"means2d": means2d, "radii": torch.ones(30), "width": 10, "height": 10})
    assert len(field) == 35
    assert torch.sigmoid(field.opacities).max() <= 0.02 + 1e-6
    assert opt.state[field.opacities]["exp_avg"].abs().sum() == 0
    assert_state_matches(field, opt)


def gaussians_config(steps: int) -> RunConfig:
    cfg = tiny_config(max_steps=steps)
    cfg.field_config = GaussiansConfig(num_init=1000, sh_degree=1, sh_degree_every=20, densify_from=10,
                                       densify_every=10, densify_until=40, reset_opacity_every=0)
    return cfg


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory, procedural_root):
    """A gaussians run of 50 steps on the procedural scene at half resolution, and its PSNR before training."""
    cfg = gaussians_config(50)
    cfg.train.lr = 2e-2  # twice the 3DGS rates: 50 steps are few
    run_dir = tmp_path_factory.mktemp("gaussians") / "run"
    trainer = Trainer(cfg, run_dir)
    test = cfg.scene.load("test")
    before = evaluate(trainer.model, test, every=8, show_progress=False)["psnr"]
    trainer.train(show_progress=False)
    return run_dir, trainer, before, test


def test_short_training_improves_psnr_and_grows(gaussian_run):
    run_dir, trainer, before, test = gaussian_run
    after = evaluate(trainer.model, test, every=8, show_progress=False)["psnr"]
    assert after > before + 3.0, (before, after)
    assert len(trainer.field) != 1000  # density control ran inside the common training loop
    assert int(trainer.field.active_sh_degree) == 1


def test_checkpoint_round_trip_with_a_changed_count(gaussian_run):
    run_dir, trainer, _, test = gaussian_run
    run = load_run(run_dir)  # builds 1000 Gaussians from the config, then loads the trained count
    assert len(run.field) == len(trainer.field) != 1000
    assert 0 < run.grid.occupied_fraction() < 0.9  # filled from the Gaussians' density before saving
    bg = torch.ones(3)
    with torch.no_grad():
        a = run.model.render(test.cameras, 0, bg)["rgb"]
        b = trainer.model.render(test.cameras, 0, bg)["rgb"]
    assert torch.equal(a, b)
    from viewer import RenderTarget  # the viewer draws the splats through the same render

    shown = RenderTarget(run.model, bg).image(test.cameras[0], "RGB")
    assert shown.shape == (*test.cameras.size(0)[::-1], 3)
    assert abs(shown.astype(float) / 255 - a[..., :3].clamp(0, 1).numpy()).max() < 1 / 255 + 1e-6
    resumed = Trainer(RunConfig.load(run_dir / "config.yaml"), run_dir)
    resumed.resume()  # optimizer state of the resized parameters loads, and training goes on
    resumed.cfg.train.max_steps = 52
    resumed.train(show_progress=False)
    assert resumed.step == 52


def test_splat_ply_round_trips(gaussian_run, tmp_path):
    from fields.cli import main

    run_dir = gaussian_run[0]
    out = tmp_path / "splats.ply"
    main(["export", "splats", str(run_dir), "--output", str(out)])
    header = out.read_bytes()[:2000].decode("ascii", "replace")
    assert "property float f_rest_8" in header and "property float rot_3" in header  # SH degree 1: 3 x 3 rest
    # read back by a third-party PLY parser (trimesh's), property by property in the 3DGS layout
    raw = trimesh.load(out, process=False).metadata["_ply_raw"]["vertex"]["data"]
    col = lambda *names: torch.from_numpy(np.stack([raw[n] for n in names], -1).astype(np.float32))  # noqa: E731
    g = load_run(run_dir).field.gaussians()
    n, k = len(g["means"]), g["shN"].shape[1]
    back = {"means": col("x", "y", "z"), "sh0": col("f_dc_0", "f_dc_1", "f_dc_2").reshape(n, 1, 3),
            "shN": col(*[f"f_rest_{i}" for i in range(3 * k)]).reshape(n, 3, k).transpose(1, 2),
            "opacities": col("opacity")[:, 0], "scales": col("scale_0", "scale_1", "scale_2"),
            "quats": col("rot_0", "rot_1", "rot_2", "rot_3")}
    for name, t in g.items():
        assert torch.equal(back[name], t), name


def test_splat_ply_and_dot_splat_load_in_plyfile_and_round_trip(gaussian_run, tmp_path):
    """The PLY loads in plyfile (a third-party PLY reader) with the 3DGS properties, and the .splat written beside
    it holds every Gaussian (32 bytes each), largest first, with its position, scale, DC colour, opacity and
    rotation up to the format's 8-bit quantisation."""
    from plyfile import PlyData

    from fields.cli import main
    from fields.export.splats import read_dot_splat

    run_dir = gaussian_run[0]
    out = tmp_path / "splats.ply"
    main(["export", "splats", str(run_dir), "--output", str(out)])
    g = load_run(run_dir).field.gaussians()
    n = len(g["means"])
    vertex = PlyData.read(str(out))["vertex"]
    assert vertex.count == n
    assert np.array_equal(np.stack([vertex[c] for c in ("x", "y", "z")], -1), g["means"].numpy())
    assert np.array_equal(vertex["opacity"], g["opacities"].numpy())

    dot = out.with_suffix(".splat")
    assert dot.stat().st_size == 32 * n
    rec = read_dot_splat(dot)
    opacity = torch.sigmoid(g["opacities"])
    order = torch.argsort(-(g["scales"].sum(-1).exp() * opacity), stable=True)  # largest first
    assert torch.equal(torch.from_numpy(rec["position"].copy()), g["means"][order])
    assert torch.allclose(torch.from_numpy(rec["scale"].copy()), g["scales"][order].exp(), rtol=1e-6)
    rgb = (0.5 + SH_C0 * g["sh0"][order, 0]).clamp(0, 1)
    assert (torch.from_numpy(rec["rgba"][:, :3] / 255.0).float() - rgb).abs().max() <= 1 / 255 + 1e-6
    assert (torch.from_numpy(rec["rgba"][:, 3] / 255.0).float() - opacity[order]).abs().max() <= 1 / 255 + 1e-6
    q = (torch.from_numpy(rec["rotation"].astype(np.float32)) - 128) / 128
    want = torch.nn.functional.normalize(g["quats"][order], dim=-1)
    assert (q - want).abs().max() <= 1 / 128 + 1e-6


def test_a_dot_splat_of_a_wrong_size_is_refused_naming_the_file(tmp_path):
    from fields.export.splats import read_dot_splat

    bad = tmp_path / "cut.splat"
    bad.write_bytes(bytes(33))
    with pytest.raises(ValueError, match="cut.splat"):
        read_dot_splat(bad)


def test_splats_export_of_a_volume_run_is_one_clear_line(trained_run, tmp_path, capsys):
    from fields.cli import main

    with pytest.raises(SystemExit):
        main(["export", "splats", str(trained_run), "--output", str(tmp_path / "x.ply")])
    assert "has no Gaussians to export" in capsys.readouterr().out


def test_density_is_the_sum_of_gaussian_kernels():
    """The cell index gives the brute-force sum over the Gaussians: at least every one within 3 sigma (of its
    largest scale), at most all of them."""
    from renderers.splatting import quat_to_rotmat

    torch.manual_seed(1)
    field = GaussiansConfig(num_init=300).build(BOX)
    with torch.no_grad():
        field.quats.normal_()
        field.scales.add_(0.3 * torch.randn_like(field.scales))
        field.opacities.normal_()
    x = torch.rand(2000, 3) * 2 - 1
    rot, s, o = quat_to_rotmat(field.quats), field.scales.exp(), torch.sigmoid(field.opacities).clamp(max=0.99)
    local = torch.einsum("gji,pgj->pgi", rot, x[:, None] - field.means[None]) / s
    peak = -torch.log1p(-o) / (math.sqrt(2 * math.pi) * s.min(-1).values)
    kernels = peak * torch.exp(-0.5 * (local**2).sum(-1))
    near = (x[:, None] - field.means[None]).norm(dim=-1) <= 3 * s.max(-1).values
    full, within = kernels.sum(1), (kernels * near).sum(1)
    got = field.density(x).detach()
    assert (got >= within - 1e-4).all() and (got <= full + 1e-4).all()
    assert ((full - got) / full).mean() < 0.01


def test_seeding_from_a_trained_field_lands_on_the_surface(trained_run, tmp_path):
    from fields.training.gaussian_distill import distill_to_gaussians, seed_points

    teacher = load_run(trained_run)
    points, colors, sizes = seed_points(teacher, 1000, show_progress=False)
    assert procedural.sdf(points).abs().median() < TINY_RUN_POINT_DISTANCE
    assert (sizes > 0).all() and sizes.median() < 0.1
    train = TrainConfig(max_time=None, max_steps=3, warmup_steps=1, log_every=1)
    run = distill_to_gaussians(teacher, tmp_path / "student", field_config=GaussiansConfig(sh_degree=0),
                               train=train, num_points=500, n_teacher_views=2, show_progress=False)
    student = load_run(run)
    assert student.step == 3 and abs(len(student.field) - 500) < 50
    assert procedural.sdf(student.field.means.detach()).abs().median() < TINY_RUN_POINT_DISTANCE


def test_a_scene_with_sfm_points_starts_its_gaussians_on_them(procedural_root):
    """As 3DGS does: one Gaussian per structure-from-motion point with its colour, sized by its neighbours."""
    cfg = gaussians_config(1)
    data = cfg.scene.load("train")
    points = procedural.surface_points(500)
    colors = torch.randint(0, 256, (500, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    trainer = Trainer(cfg, None, data=dataclasses.replace(data, points=points, point_colors=colors))
    g = trainer.field.gaussians()
    assert torch.equal(g["means"], points)
    rgb = g["sh0"][:, 0] * SH_C0 + 0.5
    assert torch.allclose(rgb, colors.float() / 255, atol=1e-6)
    spacing = torch.cdist(points, points).topk(4, largest=False).values[:, 1:].mean(-1)
    assert torch.allclose(g["scales"].exp(), spacing[:, None].expand(-1, 3), rtol=1e-5)
    unseeded = Trainer(cfg, None, data=data).field  # without points: random ones in the box
    assert len(unseeded) == cfg.field_config.num_init


def test_the_scene_scale_is_the_scenes_box_also_under_contraction(procedural_root):
    """Gaussians size their means' learning rate and grow/prune sizes by the scene's own box, also where the
    run contracts space and builds the field over the inner region [-1, 1]^3 (which Gaussians do not use)."""
    cfg = gaussians_config(1)
    data = dataclasses.replace(cfg.scene.load("train"), aabb=torch.tensor([[-3.0, -2.0, -1.0], [3.0, 2.0, 1.0]]))
    for contraction, box in (("off", data.aabb), ("on", torch.tensor([[-1.0] * 3, [1.0] * 3]))):
        cfg.capture = dataclasses.replace(cfg.capture, contraction=contraction)
        trainer = Trainer(cfg, None, data=data)
        assert torch.equal(trainer.field.aabb, box)
        assert trainer.field.scene_scale == pytest.approx(0.5 * 56 ** 0.5)  # half of |(6, 4, 2)|
        (means,) = [g for g in trainer.optimizer.param_groups if g.get("name") == "means"]
        assert means["params"][0] is trainer.field.means
        assert means["base_lr"] == pytest.approx(cfg.field_config.lr_means * 0.5 * 56 ** 0.5 * cfg.train.lr / 1e-2)


def test_a_capture_without_sfm_points_seeds_its_gaussians_over_what_the_cameras_see(procedural_root):
    """Without SfM points but with a depth range, Gaussians start at points in front of the training cameras,
    each inside its camera's image and between the near and far bounds (the far background included), not in
    the scene box."""
    cfg = gaussians_config(1)
    data = cfg.scene.load("train")
    near, far = 0.5, 50.0
    one = dataclasses.replace(data, cameras=data.cameras[[0]], images=Images.stack([data.images[0]]),
                              near_far=(near, far))
    g = Trainer(cfg, None, data=one).field.gaussians()
    assert len(g["means"]) == cfg.field_config.num_init
    cams, centre = one.cameras, one.cameras.c2w[0, :3, 3]
    dist = (g["means"] - centre).norm(dim=-1)
    assert dist.min() >= near * 0.999 and dist.max() <= far * 1.001
    outside = ((g["means"] < one.aabb[0]) | (g["means"] > one.aabb[1])).any(-1)
    assert outside.float().mean() > 0.3  # random Gaussians in the box would all be inside it
    local = (g["means"] - centre) @ cams.c2w[0, :3, :3]  # camera axes (OpenGL: looking down -z)
    px = cams.fx[0] * local[:, 0] / -local[:, 2] + cams.cx[0]
    py = cams.fy[0] * -local[:, 1] / -local[:, 2] + cams.cy[0]
    w, h = cams.size(0)
    assert bool((local[:, 2] < 0).all() and (px > -1e-3).all() and (px < w + 1e-3).all()
                and (py > -1e-3).all() and (py < h + 1e-3).all())


def test_crop_windows_visit_the_border_pixels_too():
    """Random crop windows cover a border pixel at least ~half as often as a central one (windows kept inside the
    image would cover it 1/crop as often) and are never thinner than half a crop."""
    from fields.training.steps import WholeImages

    gen, cover, sides = torch.Generator().manual_seed(0), torch.zeros(300), []
    for _ in range(4000):
        start, end = WholeImages.span(64, 300, gen)
        cover[start:end] += 1
        sides.append(end - start)
    assert min(sides) >= 32 and max(sides) == 64
    assert cover[[0, -1]].min() > 0.4 * cover[100:200].mean()
    assert WholeImages.span(64, 50, gen) == (0, 50)


def test_auto_coarse_to_fine_only_where_images_train_in_windows(procedural_root):
    """``coarse_levels`` auto: the coarse levels (and their steps at 1/8, 1/4, 1/2 size) where training images
    are larger than the crop window, none where they train whole."""
    from fields.training.steps import AUTO_COARSE_LEVELS, build_steps

    cfg = gaussians_config(10)
    assert cfg.field_config.coarse_levels == "auto"
    side = max(build_steps(cfg, torch.device("cpu")).data.cameras.size(0))
    for crop, levels in ((side, 0), (side - 1, AUTO_COARSE_LEVELS), (0, 0)):
        cfg.field_config = dataclasses.replace(cfg.field_config, crop=crop)
        steps = build_steps(cfg, torch.device("cpu"))
        assert steps.coarse_levels == levels, crop
        every = cfg.field_config.coarse_every
        assert [steps.downscale(k * every) for k in range(levels + 1)] == [2 ** (levels - k) for k in range(levels + 1)]


def test_crop_and_coarse_steps_have_the_gradients_of_the_whole_image_step(procedural_root, monkeypatch):
    """A crop step's L1 gradients are those of the whole image's step (plain-PyTorch rasterizer) restricted to
    the crop; a coarse-to-fine step renders the camera at the reduced size against the area-averaged target,
    with the same gradients as the reference render of that camera, and full resolution follows."""
    from fields.training.steps import StepContext, build_steps
    from renderers.imaging import on_background

    cfg = gaussians_config(10)
    cfg.train = dataclasses.replace(cfg.train, ssim_weight=0.0, random_background=False)
    cfg.field_config = dataclasses.replace(cfg.field_config, crop=24, coarse_levels=1, coarse_every=3)
    torch.manual_seed(0)
    steps = build_steps(cfg, torch.device("cpu"))
    cams, ctx = steps.data.cameras, lambda step: StepContext(step, torch.Generator().manual_seed(3), 0.0, False)
    params = [getattr(steps.field, name) for name in PER_GAUSSIAN[:5]]
    i = int(torch.randint(0, len(steps.data), (), generator=torch.Generator().manual_seed(3)))
    bg = torch.tensor(steps.data.background)

    def reference_grads(camset, target, window):
        monkeypatch.setenv("FIELDS_NATIVE", "0")
        x0, y0, w, h = window
        rgb = steps.model.render(camset, i, bg)["rgb"][y0:y0 + h, x0:x0 + w]
        monkeypatch.delenv("FIELDS_NATIVE")
        return torch.autograd.grad((rgb - target[y0:y0 + h, x0:x0 + w]).abs().mean(), params)

    # full resolution (step 3), a tile-aligned crop
    monkeypatch.setattr(steps, "window", lambda w, h, gen: (16, 16, 24, 24))
    loss, metrics, info = steps.loss(ctx(3))
    assert info["rgb"].shape == (24, 24, 3) and metrics["samples"] == 24 * 24
    width, height = cams.size(i)
    assert info["grad_scale"] == pytest.approx(24 * 24 / (width * height))
    got = torch.autograd.grad(loss, params)
    want = reference_grads(cams, on_background(steps.data.rgba(i), bg), (16, 16, 24, 24))
    for g, r in zip(got, want):
        assert r.abs().sum() > 0 and torch.allclose(g, r, atol=1e-6, rtol=1e-4)

    # coarse (step 0): half resolution, whole image
    monkeypatch.setattr(steps, "window", lambda w, h, gen: None)
    loss, metrics, info = steps.loss(ctx(0))
    w, h = width // 2, height // 2
    assert (info["width"], info["height"]) == (w, h) and info["rgb"].shape == (h, w, 3)
    full = on_background(steps.data.rgba(i), bg)
    target = full[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean((1, 3))  # area average of 2x2 pixels
    got = torch.autograd.grad(loss, params)
    want = reference_grads(cams.resized(w, h), target, (0, 0, w, h))
    for g, r in zip(got, want):
        assert r.abs().sum() > 0 and torch.allclose(g, r, atol=1e-6, rtol=1e-4)


# -- 3DGS-MCMC: a fixed budget, relocation -------------------------------------------------------------------

@pytest.mark.parametrize("opacity", [0.01, 0.3, 0.7, 0.95, 0.999])
@pytest.mark.parametrize("copies", [1, 2, 5, 51])
def test_relocated_copies_stack_to_the_original_opacity(opacity, copies):
    o_new, s_new = relocated(torch.tensor([opacity]), torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([copies]))
    assert abs(1 - (1 - float(o_new)) ** copies - opacity) < 1e-6
    assert 0 < float(o_new) <= opacity + 1e-7 and (s_new <= torch.tensor([0.1, 0.2, 0.3]) + 1e-9).all()
    if copies == 1:
        assert float(o_new) == pytest.approx(opacity) and torch.allclose(s_new, torch.tensor([[0.1, 0.2, 0.3]]))


@pytest.mark.parametrize("opacity", [0.7, 0.95])
@pytest.mark.parametrize("copies", [2, 4])
def test_relocated_copies_render_like_the_original(opacity, copies):
    """n copies with the relocated opacity and scales, splatted at the original's place, cover the image as the
    original does (within 5 %); with the opacity corrected but not the scales they cover far more."""
    from renderers import splatting as sp
    from test_splatting import look_at_origin

    cams = look_at_origin([0.0, 0.0, 3.0], width=64, height=64, fov=0.6)
    scales = torch.full((1, 3), 0.05)
    o_new, s_new = relocated(torch.tensor([opacity]), scales, torch.tensor([copies]))

    def covered(n, o, s):
        out = sp.render_gaussians(torch.zeros(n, 3), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), s.repeat(n, 1),
                                  o.repeat(n), torch.ones(n, 3), cams, 0, torch.zeros(3))
        return float(out["opacity"].sum())

    original = covered(1, torch.tensor([opacity]), scales)
    assert abs(covered(copies, o_new, s_new) / original - 1) < 0.05
    assert covered(copies, o_new, scales) / original > 1.1


def test_mcmc_relocates_dead_gaussians_onto_live_ones():
    cfg = GaussiansConfig(num_init=40, strategy="mcmc", densify_from=0, densify_every=10, max_gaussians=40)
    field = cfg.build(BOX)
    opt = adam_with_state(field)
    dead = torch.tensor([3, 7, 11, 30])
    with torch.no_grad():
        field.opacities[:] = 0.0
        field.opacities[dead] = -10.0
    before = {name: getattr(field, name).detach().clone() for name in PER_GAUSSIAN}

    done = field.control.step(10, opt, {})

    assert done == {"relocated": 4, "added": 0} and len(field) == 40  # at the budget: nothing added
    assert torch.sigmoid(field.opacities).min() > cfg.prune_opacity
    assert_state_matches(field, opt)
    for i in dead.tolist():  # each dead row now holds a copy of a live Gaussian, whose moments restart at zero
        src = ((before["means"] - field.means[i]).norm(dim=-1) < 1e-3).nonzero()[:, 0]
        assert len(src) == 1 and int(src) not in dead.tolist()
        copies = int(((field.means - field.means[i]).norm(dim=-1) < 1e-3).sum())
        o_new = float(torch.sigmoid(field.opacities.detach()[i]))
        assert abs(1 - (1 - o_new) ** copies - 0.5) < 1e-5
        assert opt.state[field.sh0]["exp_avg"][i].abs().sum() == 0
        assert opt.state[field.sh0]["exp_avg"][int(src)].abs().sum() == 0


@pytest.fixture(scope="module")
def mcmc_run(tmp_path_factory, procedural_root):
    """An anti-aliased MCMC run of 80 steps with a budget of 1100 Gaussians from 1000: the count after each
    strategy step and the loss of each step."""
    cfg = gaussians_config(80)
    cfg.train.lr, cfg.train.log_every = 2e-2, 1
    cfg.field_config = dataclasses.replace(cfg.field_config, strategy="mcmc", max_gaussians=1100, densify_until=60,
                                           antialiased=True)
    run_dir = tmp_path_factory.mktemp("mcmc") / "run"
    trainer = Trainer(cfg, run_dir)
    counts, step_fn = [], trainer.field.control.step

    def counted(step, optimizer, info):
        done = step_fn(step, optimizer, info)
        counts.append((step, len(trainer.field), done))
        return done

    trainer.field.control.step = counted
    trainer.train(show_progress=False)
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, trainer, counts, losses


def test_mcmc_never_exceeds_its_budget_and_the_loss_falls(mcmc_run):
    _, trainer, counts, losses = mcmc_run
    rounds = [(step, n) for step, n, done in counts if any(done.values())]
    assert [n for _, n in rounds][:2] == [1050, 1100]  # 5 % growth per round, up to the budget
    assert max(n for _, n, _ in counts) == 1100 == len(trainer.field)
    assert len(losses) == 80 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses


def test_an_antialiased_run_filters_and_reloads_its_filter(mcmc_run):
    run_dir, trainer, _, _ = mcmc_run
    assert trainer.field.filter3d.shape == (1100,) and (trainer.field.filter3d > 0).all()
    run = load_run(run_dir)
    assert run.field.cfg.antialiased and run.field.cfg.strategy == "mcmc"
    assert torch.equal(run.field.filter3d, trainer.field.filter3d)
    exported = run.field.gaussians()  # splat exports bake the filter in
    assert (exported["scales"] > run.field.scales.detach()).all()
    test = trainer.steps.data.cameras
    with torch.no_grad():
        assert torch.equal(run.model.render(test, 0, torch.ones(3))["rgb"],
                           trainer.model.render(test, 0, torch.ones(3))["rgb"])


def test_the_2d_filter_alone_compensates_opacities_without_a_3d_filter(mcmc_run):
    """``filter3d`` off: an anti-aliased field keeps no 3-D filter and renders its own Gaussians with the 2-D
    filter's opacity compensation only (the plain render of the same Gaussians differs)."""
    _, trainer, _, _ = mcmc_run
    cams, bg = trainer.steps.data.cameras, torch.ones(3)
    fields_by_mode = {}
    for mode in ({"antialiased": True, "filter3d": False}, {"antialiased": False}):
        field = dataclasses.replace(trainer.field.cfg, **mode).build(BOX)
        state = {k: v for k, v in trainer.field.state_dict().items() if not k.endswith("filter3d")}
        field.load_state_dict(state, strict=False)
        fields_by_mode[mode["antialiased"]] = field
    aa, plain = fields_by_mode[True], fields_by_mode[False]
    assert aa.filter3d is None and len(aa) == len(trainer.field)
    with torch.no_grad():
        got = aa.splat(cams, 0, bg)["rgb"]
        means, quats = aa.means.detach(), aa.quats.detach()
        want = render_gaussians(means, quats, aa.scales.exp(), torch.sigmoid(aa.opacities), aa.colors(cams.centers[0]),
                                cams, 0, bg, antialiased=True)["rgb"]
        assert torch.equal(got, want)
        assert (got - plain.splat(cams, 0, bg)["rgb"]).abs().max() > 1e-3


def test_the_3d_filter_is_a_pixel_at_the_closest_view_and_keeps_each_integral():
    from test_splatting import look_at_origin

    cams = look_at_origin([0.0, 0.0, 3.0], width=40, height=40, fov=0.6)
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 5.0]])  # the last behind the camera
    variance = filter_variance(means, cams)
    fx = float(cams.fx[0])
    assert torch.allclose(variance, torch.tensor([0.2 * (3 / fx) ** 2, 0.2 * (2 / fx) ** 2, 0.2 * (3 / fx) ** 2]))
    scales, opac = torch.tensor([[0.01, 0.02, 0.001]]), torch.tensor([0.8])
    s, o = smoothed(scales, opac, torch.tensor([1e-4]))
    assert torch.allclose(s * s, scales * scales + 1e-4)
    assert torch.allclose(o * s.prod(), opac * scales.prod())  # the same integral of opacity over space
