"""Camera refinement: a learned SE(3) correction per training camera (nerfacto's SO3xR3), for poses from
structure-from-motion that are off by a little.

Each camera ``i`` gets six numbers, an axis-angle rotation ``w_i`` and a translation ``u_i``, zero at the start, in
the camera's own frame: the refined pose is ``c2w_i @ [exp(w_i) | u_i]`` (nerfstudio's ``apply_to_camera``). Only
the training cameras are refined: evaluation renders the held-out views from their poses as given; the run's
cameras.json holds the refined training poses (what the viewer and exports use).

Both training strategies use it (``fields.training.steps.Steps`` holds the shared part: optimizer group with its
own learning rate and warm-up, checkpoint state, refined split):

- ray batches (``RayBatches``): a batch's rays, built from the dataset poses, are moved by the correction of
  their camera (``apply``), which needs no change to ray generation (pinhole, distorted and fisheye lenses alike);
- whole images (``WholeImages``, Gaussians): the image's camera is rendered from its refined pose
  (``refined_c2w(i)``, a tensor with the corrections' gradient); the splatting projection is differentiable
  w.r.t. the view matrix (``renderers.splatting``, native kernels included).
"""

from __future__ import annotations

import torch
from torch import nn


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] of axis-angle vectors ``w`` [..., 3] (Rodrigues; Taylor series near zero,
    so the gradient at the zero start is exact and finite)."""
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = theta2 < 1e-6
    theta = theta2.clamp_min(1e-12).sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    zero = torch.zeros_like(w[..., 0])
    k = torch.stack([torch.stack([zero, -w[..., 2], w[..., 1]], -1),
                     torch.stack([w[..., 2], zero, -w[..., 0]], -1),
                     torch.stack([-w[..., 1], w[..., 0], zero], -1)], -2)  # the cross-product matrix [w]x
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * k + b * (k @ k)


class CameraRefinement(nn.Module):
    """SE(3) corrections of ``c2w`` [N, 4, 4] (the training cameras), zero at the start."""

    def __init__(self, c2w: torch.Tensor):
        super().__init__()
        # per camera: axis-angle rotation (3) and translation (3), in the camera's frame
        self.delta = nn.Parameter(torch.zeros(len(c2w), 6, dtype=torch.float32))
        self.register_buffer("c2w", c2w.detach().float().clone(), persistent=False)

    def refined_c2w(self, i: int | None = None) -> torch.Tensor:
        """The refined camera-to-world matrices [N, 4, 4] (the dataset poses times the corrections), or camera
        ``i``'s alone [4, 4]."""
        delta, c2w = (self.delta, self.c2w) if i is None else (self.delta[i:i + 1], self.c2w[i:i + 1])
        corr = torch.eye(4, dtype=delta.dtype, device=delta.device).repeat(len(delta), 1, 1)
        corr[:, :3, :3] = so3_exp(delta[:, :3])
        corr[:, :3, 3] = delta[:, 3:]
        refined = c2w @ corr
        return refined if i is None else refined[0]

    def apply(self, cams: torch.Tensor, origins: torch.Tensor, dirs: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays [B, 3] of the dataset cameras ``cams`` [B] moved by their cameras' corrections: with ``R`` the
        camera's rotation, the direction turns by ``R exp(w) R^T`` and the origin moves by ``R u``
        (differentiable w.r.t. the corrections)."""
        rot = self.c2w[:, :3, :3]
        turn = rot @ so3_exp(self.delta[:, :3]) @ rot.transpose(1, 2)  # [N, 3, 3], once per batch
        shift = (rot @ self.delta[:, 3:, None])[..., 0]
        cams = cams.to(self.delta.device)
        return (origins + shift.index_select(0, cams),
                (turn.index_select(0, cams) @ dirs[..., None])[..., 0])


def pose_errors(c2w: torch.Tensor, true_c2w: torch.Tensor) -> tuple[float, float]:
    """Mean rotation error (degrees) and mean position error (world units) of poses ``c2w`` against
    ``true_c2w``, both [N, 4, 4]."""
    rel = c2w[:, :3, :3].transpose(1, 2) @ true_c2w[:, :3, :3]
    cos = ((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    angle = torch.rad2deg(torch.acos(cos)).mean()
    return float(angle), float((c2w[:, :3, 3] - true_c2w[:, :3, 3]).norm(dim=-1).mean())
