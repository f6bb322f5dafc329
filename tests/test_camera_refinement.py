"""Camera refinement (a learned SE(3) correction per training camera) and mip-NeRF 360's distortion loss."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import tiny_config
from fields.run.checkpoint import load_checkpoint, list_checkpoints
from fields.run.config import CaptureConfig
from fields.run.folder import load_run
from fields.training.camera_refinement import CameraRefinement, pose_errors, so3_exp
from fields.training.trainer import Trainer
from renderers.compositing import distortion


def distortion_quadratic(weights, t_starts, t_ends, ray_indices, n_rays):
    """The distortion loss straight from its definition, O(S^2) per ray: the oracle."""
    out = []
    for r in range(n_rays):
        sel = ray_indices == r
        w, s, e = weights[sel], t_starts[sel], t_ends[sel]
        m = 0.5 * (s + e)
        out.append((w[:, None] * w[None, :] * (m[:, None] - m[None, :]).abs()).sum() + (w * w * (e - s)).sum() / 3)
    return torch.stack(out)


def test_distortion_loss_matches_the_quadratic_definition_in_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([5, 0, 1, 17, 3, 40])  # a ray without samples and one with a single sample
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), counts)
    gaps = torch.rand(len(ray_indices), generator=g) * 0.1 + 0.01
    t_starts = torch.cat([torch.rand(1, generator=g) + torch.cat([torch.zeros(1), c.cumsum(0)[:-1]])
                          for c in gaps.split(counts.tolist()) if len(c)])
    t_ends = t_starts + gaps * torch.rand(len(gaps), generator=g)  # samples need not touch each other
    weights = (torch.rand(len(gaps), generator=g) * 0.3).requires_grad_()
    t_starts.requires_grad_(), t_ends.requires_grad_()
    cot = torch.rand(len(counts), generator=g)

    got = distortion(weights, t_starts, t_ends, ray_indices, len(counts))
    want = distortion_quadratic(weights, t_starts, t_ends, ray_indices, len(counts))
    assert got.shape == (len(counts),) and want[1] == 0 and want.min() < want.max()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    grads = torch.autograd.grad((got * cot).sum(), (weights, t_starts, t_ends))
    wants = torch.autograd.grad((want * cot).sum(), (weights, t_starts, t_ends))
    for a, b in zip(grads, wants):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert distortion(weights[:0], t_starts[:0], t_ends[:0], ray_indices[:0], 3).tolist() == [0.0, 0.0, 0.0]


def test_so3_exp_is_the_matrix_exponential_with_a_finite_gradient_at_zero():
    w = torch.tensor([[0.3, -0.2, 0.5], [1e-5, 2e-5, -1e-5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    skew = torch.zeros(3, 3, 3, dtype=torch.float64)
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    skew = skew - skew.transpose(1, 2)
    assert torch.allclose(so3_exp(w), torch.linalg.matrix_exp(skew), atol=1e-12)
    zero = torch.zeros(1, 3, requires_grad=True)
    (grad,) = torch.autograd.grad((so3_exp(zero) * torch.randn(1, 3, 3)).sum(), zero)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def perturbed(c2w: torch.Tensor, degrees: float, shift: float, seed: int = 0) -> torch.Tensor:
    """``c2w`` times random SE(3) moves: rotations of ``degrees`` about random axes and translations of length
    ``shift``, in each camera's frame."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.nn.functional.normalize(torch.randn(len(c2w), 3, generator=g), dim=-1)
    move = torch.eye(4).repeat(len(c2w), 1, 1)
    move[:, :3, :3] = so3_exp(axes * torch.deg2rad(torch.tensor(degrees)))
    move[:, :3, 3] = torch.nn.functional.normalize(torch.randn(len(c2w), 3, generator=g), dim=-1) * shift
    return c2w @ move


def with_poses(data, c2w):
    return dataclasses.replace(data, cameras=dataclasses.replace(data.cameras, c2w=c2w))


def refining(cfg, **capture):
    cfg.capture = CaptureConfig(camera_refinement="on", **capture)
    return cfg


def test_refinement_pulls_perturbed_cameras_back_towards_the_truth(procedural_root):
    cfg = refining(tiny_config(max_steps=300, grid_every=8), camera_lr=3e-3, camera_warmup_steps=100)
    truth = cfg.scene.load("train")
    size = float((truth.aabb[1] - truth.aabb[0]).norm())
    wrong = perturbed(truth.cameras.c2w, degrees=2.0, shift=0.02 * size)
    start = pose_errors(wrong, truth.cameras.c2w)
    trainer = Trainer(cfg, data=with_poses(truth, wrong))
    trainer.train(show_progress=False)
    refined = trainer.steps.refinement.refined_c2w().detach()
    end = pose_errors(refined, truth.cameras.c2w)
    print(f"rotation {start[0]:.3f} -> {end[0]:.3f} deg, position {start[1]:.4f} -> {end[1]:.4f}")
    # measured: 2.0 -> 1.46 degrees, 0.069 -> 0.058 (the shift along the view axis is barely observable)
    assert end[0] < 0.85 * start[0] and end[1] < 0.92 * start[1]


def test_refinement_off_leaves_the_step_as_it_was(tmp_path, procedural_root):
    trainer = Trainer(tiny_config(max_steps=3), tmp_path / "run")  # the procedural scene: 'auto' is off
    assert trainer.cfg.capture.camera_refinement == "off" and trainer.steps.refinement is None
    assert len(trainer.optimizer.param_groups) == len(trainer.field.param_groups(1.0))
    trainer.train(show_progress=False)
    assert "camera_refinement" not in load_checkpoint(list_checkpoints(tmp_path / "run")[0])
    record = json.loads((tmp_path / "run" / "cameras.json").read_text())
    assert torch.equal(torch.tensor(record["c2w"]), trainer.data.cameras.c2w.double())
    # on, with zero corrections, the rays are the same as without
    steps = trainer.steps
    idx = steps.rays.draw(64, torch.Generator().manual_seed(1))
    zero = CameraRefinement(trainer.data.cameras.c2w)
    for a, b in zip(steps.rays.rays(idx), steps.rays.rays(idx, zero)):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("backend", ["rays", "gaussians"])
def test_resume_restores_the_corrections_and_cameras_json_holds_the_refined_poses(tmp_path, procedural_root,
                                                                                  backend):
    def make():
        cfg = refining(tiny_config(max_steps=24, ckpt_every=8), camera_warmup_steps=2)
        return cfg if backend == "rays" else gaussians(cfg)

    straight = Trainer(make(), tmp_path / "a")
    straight.train(show_progress=False)

    def interrupt(trainer):
        if trainer.step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(make(), tmp_path / "b").train(callbacks=[interrupt], show_progress=False)
    resumed = Trainer(make(), tmp_path / "b")
    resumed.resume()
    assert resumed.steps.refinement.delta.abs().max() > 0  # the corrections of step 13, not zeros
    resumed.train(show_progress=False)
    a, b = straight.steps.refinement.delta.detach(), resumed.steps.refinement.delta.detach()
    assert a.abs().max() > 0 and torch.allclose(a, b, atol=1e-6, rtol=0)
    record = json.loads((tmp_path / "b" / "cameras.json").read_text())
    refined = resumed.steps.refinement.refined_c2w().detach()
    assert torch.allclose(torch.tensor(record["c2w"], dtype=torch.float32), refined, atol=1e-6)
    assert not torch.allclose(refined, resumed.data.cameras.c2w, atol=1e-6)
    run = load_run(tmp_path / "b")  # evaluating the training views renders them from the refined poses
    assert torch.allclose(run.split("train").cameras.c2w, refined, atol=1e-6)
    assert torch.equal(run.split("test").cameras.c2w, resumed.cfg.scene.load("test").cameras.c2w)


def test_distortion_weight_adds_the_loss_to_ray_batches_and_auto_is_off(procedural_root):
    from fields.training.steps import StepContext

    def first_loss(weight):
        cfg = tiny_config()
        cfg.capture = CaptureConfig(distortion_weight=weight)
        trainer = Trainer(cfg)
        loss, metrics, _ = trainer.steps.loss(StepContext(0, torch.Generator().manual_seed(0), 0.0, False))
        return trainer, loss.item(), metrics["mse"]

    trainer, loss, mse = first_loss("auto")
    assert trainer.cfg.capture.distortion_weight == 0.0 and loss == mse
    _, loss, mse_weighted = first_loss(10.0)
    assert mse_weighted == mse and loss > mse  # the same batch, plus the distortion of its rays


def test_auto_capture_settings_follow_the_measurements(procedural_root):
    """'auto' decides as measured: camera refinement and appearance codes off even for a capture (on a CPU budget
    their slower steps cost more than they give), contraction and the distortion loss on for an unbounded capture
    and off for a scene in a box."""
    cfg = tiny_config()
    data = cfg.scene.load("train")
    captured = dataclasses.replace(data, near_far=(0.1, 100.0))  # a capture whose far bound is far beyond its cameras
    resolved = cfg.for_scene(captured).capture
    assert resolved.camera_refinement == "off" and resolved.appearance_dim == 0
    assert resolved.contraction == "on" and resolved.distortion_weight == 0.005
    boxed = cfg.for_scene(data).capture
    assert boxed.contraction == "off" and boxed.distortion_weight == 0.0


def gaussians(cfg):
    """``cfg`` training Gaussians (whole-image steps) instead of the hash grid."""
    from fields.backends.gaussians import GaussiansConfig

    cfg.field_config = GaussiansConfig(num_init=2000, sh_degree=1, sh_degree_every=50, densify_from=50,
                                       densify_every=25, reset_opacity_every=0)
    return cfg


def lateral_error(c2w: torch.Tensor, true_c2w: torch.Tensor) -> float:
    """Mean distance of the camera centres ``c2w`` from the true ones across each true view axis (the part of a
    position error an image shows; a shift along the axis barely changes it)."""
    d = c2w[:, :3, 3] - true_c2w[:, :3, 3]
    axis = true_c2w[:, :3, 2]
    return float((d - (d * axis).sum(-1, keepdim=True) * axis).norm(dim=-1).mean())


def test_gaussian_training_pulls_perturbed_cameras_back_towards_the_truth(procedural_root):
    """Whole-image steps learn the poses through the splatting projection's view-matrix gradient. Seconds: 16 of
    the 64 training views (each drawn ~19 times in 300 steps) and Gaussians seeded on the true surface, as a
    capture's SfM points would seed them."""
    from fields.backends.gaussians import GaussiansConfig
    from scenes import procedural
    from scenes.images import Images

    cfg = refining(tiny_config(max_steps=300), camera_lr=3e-3, camera_warmup_steps=50)
    cfg.field_config = GaussiansConfig(sh_degree=0, densify_from=10**6, reset_opacity_every=0)
    data = cfg.scene.load("train")
    keep = list(range(0, len(data), len(data) // 16))
    points = procedural.surface_points(3000)
    truth = dataclasses.replace(data, cameras=data.cameras[keep], images=Images.stack([data.images[i] for i in keep]),
                                points=points, point_colors=(procedural.albedo(points) * 255).round().to(torch.uint8))
    size = float((truth.aabb[1] - truth.aabb[0]).norm())
    wrong = perturbed(truth.cameras.c2w, degrees=2.0, shift=0.02 * size)
    trainer = Trainer(cfg, data=with_poses(truth, wrong))
    assert trainer.steps.refinement is not None and len(trainer.field) == len(points)
    trainer.train(show_progress=False)
    refined = trainer.steps.refinement.refined_c2w().detach()
    (start, _), (end, _) = pose_errors(wrong, truth.cameras.c2w), pose_errors(refined, truth.cameras.c2w)
    across = lateral_error(wrong, truth.cameras.c2w), lateral_error(refined, truth.cameras.c2w)
    print(f"rotation {start:.3f} -> {end:.3f} deg, position across the view axis {across[0]:.4f} -> {across[1]:.4f}")
    # measured: 2.0 -> 1.12 degrees, 0.052 -> 0.043 (along the axis it drifts: 0.039 -> 0.054)
    assert end < 0.85 * start and across[1] < 0.92 * across[0]
