"""How the set of Gaussians changes while training, as one of two strategy objects behind one interface
(``Strategy``: ``step`` after each optimizer step, ``regularization`` added to the loss), picked by name with
``build_strategy`` (``GaussiansConfig.strategy``):

- ``"default"``, ``DensityControl``: adaptive density control of 3D Gaussian Splatting (after gsplat's
  ``DefaultStrategy``). Between ``densify_from`` and ``densify_until``, every step adds the norm of each visible
  Gaussian's view-space mean gradient (in NDC units, as in 3DGS) to a running sum; every ``densify_every`` steps,
  Gaussians whose mean gradient exceeds ``grow_grad2d`` are cloned (small ones) or split in two (large ones,
  children sampled from the Gaussian and shrunk by 1.6), then too transparent (and, after the first opacity
  reset, too large) ones are removed. Every ``reset_opacity_every`` steps opacities are clamped down to twice the
  pruning threshold.
- ``"mcmc"``, ``MCMCControl``: 3DGS as Markov chain Monte Carlo (Kheradmand et al. 2024, after gsplat's
  ``MCMCStrategy``) with a fixed budget of ``max_gaussians``: on the same rounds, dead Gaussians (opacity at most
  ``prune_opacity``) are relocated onto live ones drawn by opacity and the count grows by 5 % up to the budget,
  new copies sharing their source's opacity and scale so that the rendered result stays the same
  (``relocated``); every step nudges each mean by noise shaped by its covariance, scaled by the means' learning
  rate and vanishing for opaque Gaussians; the loss gets small opacity and scale regularizers.

Each edit resizes the parameters in place and applies the same row edit to the optimizer's per-parameter state
(Adam's moments: copied rows get zeros, removed rows go), so the optimizer stays consistent with the field.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Callable

import torch

from fields.backends.gaussians.params import PER_GAUSSIAN, STATS, GaussianSet
from renderers.splatting import quat_to_rotmat


@dataclass
class DensitySchedule:
    """When and how Gaussians are cloned, split, pruned, reset or relocated (the ``GaussiansConfig`` fields of the
    same names document each; the MCMC strategy reads the rounds, ``prune_opacity``, ``max_gaussians`` and its
    own ``noise_lr``, ``opacity_reg`` and ``scale_reg``)."""

    densify_from: int
    densify_until: int
    densify_every: int
    grow_grad2d: float
    grow_scale3d: float
    prune_opacity: float
    prune_scale3d: float
    reset_opacity_every: int
    max_gaussians: int
    noise_lr: float
    opacity_reg: float
    scale_reg: float

    @classmethod
    def of(cls, settings: object) -> "DensitySchedule":
        """The schedule from any object with these attributes (the backend's config)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    def is_round(self, step: int) -> bool:
        """Whether step ``step`` ends with a round of density changes."""
        return self.densify_from < step < self.densify_until and step % self.densify_every == 0


def row_state(optimizer: torch.optim.Optimizer | None, p: torch.Tensor) -> list[str]:
    """The keys of ``optimizer``'s state for parameter ``p`` that hold one row per Gaussian (Adam's moments; not
    its step count): what every edit of the Gaussians must edit alike."""
    state = optimizer.state.get(p, {}) if optimizer is not None else {}
    return [key for key, v in state.items() if key != "step" and torch.is_tensor(v) and v.shape == p.shape]


@torch.no_grad()
def edit_gaussians(field: GaussianSet, optimizer: torch.optim.Optimizer | None,
                   rows: Callable[[torch.Tensor], torch.Tensor],
                   new_rows: dict[str, torch.Tensor] | None = None) -> None:
    """Replace every per-Gaussian tensor ``t`` by ``cat([rows(t), new_rows[name]])``; optimizer state rows
    follow ``rows`` and get zeros for the new rows. Statistics and the 3-D filter (which the field recomputes
    after each round) are reset."""
    new_rows = new_rows or {}
    with field.lock:
        for name in PER_GAUSSIAN:
            p = getattr(field, name)
            extra = new_rows.get(name, p.data[:0])
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            for key in row_state(optimizer, p):
                state[key] = torch.cat([rows(state[key]), state[key].new_zeros(extra.shape)])
            p.grad = None
            p.data = torch.cat([rows(p.data), extra])
        for name in STATS:
            getattr(field, name).data = field.means.new_zeros(len(field))
        if field.filter3d is not None:
            field.filter3d.data = field.means.new_zeros(len(field))


class Strategy(ABC):
    """What changes ``field``'s set of Gaussians on ``schedule`` while training (see the module docstring)."""

    def __init__(self, field: GaussianSet, schedule: DensitySchedule):
        self.field, self.cfg = field, schedule

    @abstractmethod
    def step(self, step: int, optimizer: torch.optim.Optimizer | None, info: dict) -> dict[str, int]:
        """Call after the optimizer step of training step ``step`` with what its render returned (``info``).
        Returns how many Gaussians each kind of change touched (zeros on steps without a round)."""

    def regularization(self) -> torch.Tensor | None:
        """A term for the training loss (differentiable in the Gaussians' parameters), or None."""
        return None


class DensityControl(Strategy):
    """Clone, split, prune and opacity resets of ``field``'s Gaussians on ``schedule`` (3DGS's ADC)."""

    @torch.no_grad()
    def step(self, step: int, optimizer: torch.optim.Optimizer | None, info: dict) -> dict[str, int]:
        """``info``: the render's ``means2d`` (gradient retained), ``radii`` and image ``width``/``height``.
        Returns how many Gaussians were cloned, split and pruned."""
        c = self.cfg
        done = {"cloned": 0, "split": 0, "pruned": 0}
        if step >= c.densify_until:
            return done
        self.accumulate(info)
        if c.is_round(step):
            done["cloned"], done["split"] = self.grow(optimizer, step)
            done["pruned"] = self.prune(optimizer, step)
        if c.reset_opacity_every > 0 and step > 0 and step % c.reset_opacity_every == 0:
            self.reset_opacity(optimizer)
        return done

    def accumulate(self, info: dict) -> None:
        """Add the NDC-scaled view-space gradient norm of each visible Gaussian's mean (``info``: the render's
        ``means2d`` and ``radii``, image ``width``/``height`` and, for a crop, its ``grad_scale``). In data-parallel
        training (``info["sum_over_ranks"]``) the additions of every rank's image are summed, so that every rank
        holds the same statistics and takes the same densification decisions."""
        f, means2d = self.field, info.get("means2d")
        grad2d, count = torch.zeros_like(f.grad2d), torch.zeros_like(f.grad_count)
        if means2d is not None and means2d.grad is not None and means2d.shape[0] == len(f):
            # pixels -> NDC; times the rendered window's share of the image (a crop's mean loss weighs each pixel more)
            grad = means2d.grad * torch.tensor([info["width"] / 2, info["height"] / 2]) * info.get("grad_scale", 1.0)
            visible = info["radii"] > 0
            grad2d[visible] = grad[visible].norm(dim=-1)
            count[visible] = 1
        if info.get("sum_over_ranks") is not None:
            info["sum_over_ranks"](grad2d, count)
        f.grad2d += grad2d
        f.grad_count += count

    def grow(self, optimizer, step: int) -> tuple[int, int]:
        """Clone small and split large Gaussians with a high mean gradient (up to ``max_gaussians``)."""
        c, f = self.cfg, self.field
        grads = f.grad2d / f.grad_count.clamp_min(1)
        high = grads > c.grow_grad2d
        room = max(c.max_gaussians - len(f), 0)
        if int(high.sum()) > room:  # keep the largest gradients; a split adds one Gaussian, as a clone does
            keep = torch.zeros_like(high)
            keep[grads.topk(room).indices] = True
            high &= keep
        small = f.scales.exp().max(-1).values <= c.grow_scale3d * f.scene_scale
        clone, split = high & small, high & ~small
        n_clone, n_split = int(clone.sum()), int(split.sum())
        if n_clone:
            edit_gaussians(f, optimizer, lambda t: t,
                           {name: getattr(f, name).data[clone] for name in PER_GAUSSIAN})
            split = torch.cat([split, split.new_zeros(n_clone)])
        if n_split:
            self.split(optimizer, split, step)
        return n_clone, n_split

    def split(self, optimizer, mask: torch.Tensor, step: int) -> None:
        """Replace each Gaussian of ``mask`` by two sampled from it, with scales / 1.6."""
        f = self.field
        gen = torch.Generator().manual_seed(step)  # the same children on a resumed run
        scales = f.scales.data[mask].exp()
        offsets = torch.randn(2, len(scales), 3, generator=gen) * scales
        offsets = torch.einsum("nij,bnj->bni", quat_to_rotmat(f.quats.data[mask]), offsets)
        children = {name: getattr(f, name).data[mask].repeat(2, *[1] * (getattr(f, name).dim() - 1))
                    for name in PER_GAUSSIAN}
        children["means"] = (f.means.data[mask] + offsets).reshape(-1, 3)
        children["scales"] = (scales / 1.6).log().repeat(2, 1)
        edit_gaussians(f, optimizer, lambda t: t[~mask], children)

    def prune(self, optimizer, step: int) -> int:
        """Remove nearly transparent Gaussians and, after the first opacity reset, oversized ones."""
        c, f = self.cfg, self.field
        remove = torch.sigmoid(f.opacities.data) < c.prune_opacity
        if c.reset_opacity_every > 0 and step > c.reset_opacity_every:
            remove |= f.scales.data.exp().max(-1).values > c.prune_scale3d * f.scene_scale
        if bool(remove.all()):  # never remove every Gaussian: keep the most opaque one
            remove[f.opacities.data.argmax()] = False
        n = int(remove.sum())
        if n:
            edit_gaussians(f, optimizer, lambda t: t[~remove])
        return n

    def reset_opacity(self, optimizer) -> None:
        """Clamp opacities to 2 x ``prune_opacity`` and zero their optimizer moments (as 3DGS does)."""
        f, value = self.field, 2 * self.cfg.prune_opacity
        with f.lock:
            f.opacities.data.clamp_(max=math.log(value / (1 - value)))
            for key in row_state(optimizer, f.opacities):
                optimizer.state[f.opacities][key].zero_()


def relocated(opacities: torch.Tensor, scales: torch.Tensor, copies: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacity and scales [M, 3] that each of ``copies`` [M] (1 to 51) identical Gaussians gets when one Gaussian
    of opacity ``opacities`` [M] and scales ``scales`` is replaced by them at its place (3DGS-MCMC): the
    stack is as opaque at the centre, ``1 - (1 - o_new)^n = o``, and the scales shrink by
    ``o / sum_{j=1..n} (-1)^(j-1) C(n, j) o_new^j / sqrt(j)`` so that its opacity profile stays close. (gsplat sums
    ``C(i - 1, k)`` over ``i <= n``; the hockey-stick identity gives ``C(n, k + 1)``.) Computed in float64: the
    alternating sum cancels."""
    n = copies.clamp(1, 51).double()
    o = opacities.double()
    o_new = 1 - (1 - o) ** (1 / n)
    j = torch.arange(1, 52, dtype=torch.float64)
    log_binom = torch.lgamma(n[:, None] + 1) - torch.lgamma(j + 1) - torch.lgamma((n[:, None] - j).clamp_min(0) + 1)
    terms = torch.where(j <= n[:, None], (-1) ** (j - 1) * torch.exp(log_binom) * o_new[:, None] ** j / j.sqrt(), 0.0)
    coeff = o / terms.sum(-1)
    return o_new.to(opacities.dtype), scales * coeff[:, None].to(scales.dtype)


def covariance_noise(field: GaussianSet, scale: float, generator: torch.Generator) -> torch.Tensor:
    """3DGS-MCMC's exploration noise of the means [N, 3]: standard normal noise through each Gaussian's
    covariance, times ``scale`` and ``sigmoid(100 (1 - o - 0.995))``, which silences it for all but nearly
    transparent Gaussians."""
    opacities = torch.sigmoid(field.opacities.detach())
    rot = quat_to_rotmat(field.quats.detach())
    var = field.scales.detach().exp() ** 2
    covars = (rot * var[:, None, :]) @ rot.transpose(1, 2)
    gate = torch.sigmoid(100 * (1 - opacities - 0.995))
    noise = torch.randn(field.means.shape, generator=generator) * (gate * scale)[:, None]
    return (covars @ noise[:, :, None])[:, :, 0]


class MCMCControl(Strategy):
    """3DGS-MCMC on ``schedule``: relocation of dead Gaussians, growth by 5 % per round up to ``max_gaussians``,
    noise on the means and opacity / scale regularizers. Random draws are seeded by the step, so that a resumed run
    and every rank of a data-parallel run take the same ones."""

    @torch.no_grad()
    def step(self, step: int, optimizer: torch.optim.Optimizer | None, info: dict) -> dict[str, int]:
        """Returns how many Gaussians were relocated and added."""
        c = self.cfg
        done = {"relocated": 0, "added": 0}
        gen = torch.Generator().manual_seed(step)
        if c.is_round(step):
            done["relocated"] = self.relocate(optimizer, gen)
            done["added"] = self.add(optimizer, gen)
        self.inject_noise(optimizer, gen)
        return done

    def regularization(self) -> torch.Tensor | None:
        """``opacity_reg`` x mean opacity + ``scale_reg`` x mean scale (gsplat's simple_trainer for MCMC): unused
        Gaussians fade and shrink, which frees them for relocation."""
        c, f = self.cfg, self.field
        if c.opacity_reg == 0 and c.scale_reg == 0:
            return None
        return c.opacity_reg * torch.sigmoid(f.opacities).mean() + c.scale_reg * f.scales.exp().mean()

    def sample(self, n: int, among: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``n`` indices of Gaussians ``among`` [K] drawn with replacement in proportion to their opacity."""
        weights = torch.sigmoid(self.field.opacities.data[among])
        return among[torch.multinomial(weights, n, replacement=True, generator=gen)]

    def copy_onto(self, sources: torch.Tensor) -> None:
        """Give each of ``sources`` (with repeats) the opacity and scales of ``relocated`` for the number of copies
        it will have (how often it was drawn, plus itself)."""
        f = self.field
        copies = torch.bincount(sources, minlength=len(f))[sources] + 1
        eps = torch.finfo(torch.float32).eps
        o_new, s_new = relocated(torch.sigmoid(f.opacities.data[sources]), f.scales.data[sources].exp(), copies)
        o_new = o_new.clamp(self.cfg.prune_opacity, 1 - eps)
        f.opacities.data[sources] = torch.logit(o_new)
        f.scales.data[sources] = s_new.log()

    def relocate(self, optimizer, gen: torch.Generator) -> int:
        """Move every dead Gaussian (opacity at most ``prune_opacity``) onto a live one drawn by opacity; the pair's
        optimizer moments restart from zero."""
        f = self.field
        dead = torch.sigmoid(f.opacities.data) <= self.cfg.prune_opacity
        n = int(dead.sum())
        if n == 0 or bool(dead.all()):
            return 0
        dead_idx, sources = dead.nonzero()[:, 0], self.sample(n, (~dead).nonzero()[:, 0], gen)
        with f.lock:
            self.copy_onto(sources)
            for name in PER_GAUSSIAN:
                p = getattr(f, name)
                p.data[dead_idx] = p.data[sources]
                for key in row_state(optimizer, p):
                    optimizer.state[p][key][sources] = 0
                    optimizer.state[p][key][dead_idx] = 0
        return n

    def add(self, optimizer, gen: torch.Generator) -> int:
        """Grow by 5 % (at most to ``max_gaussians``): new copies of Gaussians drawn by opacity."""
        f = self.field
        n = max(0, min(self.cfg.max_gaussians, int(1.05 * len(f))) - len(f))
        if n == 0:
            return 0
        sources = self.sample(n, torch.arange(len(f)), gen)
        with f.lock:
            self.copy_onto(sources)
        edit_gaussians(f, optimizer, lambda t: t, {name: getattr(f, name).data[sources] for name in PER_GAUSSIAN})
        return n

    def inject_noise(self, optimizer, gen: torch.Generator) -> None:
        """Add ``covariance_noise`` at ``noise_lr`` x the means' current learning rate to the means."""
        groups = [] if optimizer is None else [g for g in optimizer.param_groups if g.get("name") == "means"]
        if not groups or self.cfg.noise_lr == 0:
            return
        noise = covariance_noise(self.field, self.cfg.noise_lr * groups[0]["lr"], gen)
        with self.field.lock:
            self.field.means.data += noise


STRATEGIES: dict[str, type[Strategy]] = {"default": DensityControl, "mcmc": MCMCControl}


def build_strategy(field: GaussianSet, settings: object) -> Strategy:
    """The strategy ``settings.strategy`` names, on the schedule of ``settings`` (the backend's config)."""
    name = getattr(settings, "strategy")
    if name not in STRATEGIES:
        raise ValueError(f"--gaussians.strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name](field, DensitySchedule.of(settings))
