"""Image helpers shared by training, evaluation, export and the viewer: compositing straight RGBA on a
background, the image metrics (PSNR, SSIM), colour maps and PNG writing. The one place each of these is defined."""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import kornia
import numpy as np
import torch

from renderers import native
from renderers.native.autograd import Ssim


def on_background(rgba: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Straight (not premultiplied) RGBA [..., 4] composited on ``background`` ([3] or broadcastable [..., 3])."""
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + background * (1.0 - alpha)


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of images in [0, 1] with mean squared error ``mse``."""
    return -10.0 * math.log10(max(mse, 1e-10))


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB between two images [..., 3] in [0, 1], over the pixels ``mask`` [...] keeps (default all)."""
    err = ((a - b) ** 2).mean(-1)
    return psnr_from_mse((err.mean() if mask is None else err[mask].mean()).item())


SSIM_WINDOW = 11  # side of the Gaussian window (sigma 1.5), as in the SSIM paper and 3DGS


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM of two [H, W, 3] images in [0, 1] (11x11 Gaussian window) over the pixels ``mask`` [H, W] keeps
    (default all), differentiable w.r.t. ``a``."""
    per_pixel = ssim_map(a, b)
    return per_pixel.mean() if mask is None else per_pixel[mask].mean()


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM [H, W] (mean over channels) of ``a`` against ``b`` ([H, W, C]): ``ssim_map_reference`` on the
    native CPU kernel (``cuda/cpu/ssim.cpp``) when the build can run on these tensors and ``b`` needs no gradient.
    kornia's ten convolutions forward and six backward took ~20 ms of an 80 ms Gaussian training step."""
    ops = native.ops_for(a, b) if a.device.type == "cpu" and not b.requires_grad else None
    if ops is None or min(a.shape[0], a.shape[1]) <= SSIM_WINDOW // 2:
        return ssim_map_reference(a, b)
    window = kornia.filters.get_gaussian_kernel1d(SSIM_WINDOW, 1.5).reshape(-1)
    return Ssim.apply(a.contiguous(), b.contiguous(), window, 0.01 ** 2, 0.03 ** 2, 1e-12)


def ssim_map_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM [H, W] (mean over channels) of two [H, W, C] images in [0, 1]: kornia's, with an 11x11
    Gaussian window of sigma 1.5 and reflect padding."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    return kornia.metrics.ssim(x, y, window_size=SSIM_WINDOW)[0].mean(0)

# Anchor colours of matplotlib's "turbo" map, sampled at 9 evenly spaced points; linear in between.
_TURBO = torch.tensor([[0.190, 0.072, 0.232], [0.275, 0.417, 0.892], [0.153, 0.735, 0.891], [0.180, 0.935, 0.565],
                       [0.640, 0.990, 0.235], [0.940, 0.820, 0.200], [0.985, 0.500, 0.130], [0.830, 0.180, 0.020],
                       [0.480, 0.016, 0.011]])


def colormap(values: torch.Tensor, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    """Map scalars [...] to RGB [..., 3] in [0, 1] with a turbo-like map; range defaults to the data's."""
    lo = values.min().item() if lo is None else lo
    hi = values.max().item() if hi is None else hi
    u = ((values - lo) / max(hi - lo, 1e-8)).clamp(0, 1) * (len(_TURBO) - 1)
    i = u.floor().long().clamp(max=len(_TURBO) - 2)
    f = (u - i)[..., None]
    return _TURBO[i] * (1 - f) + _TURBO[i + 1] * f


def depth_image(depth: torch.Tensor, opacity: torch.Tensor, lo: float | None = None,
                hi: float | None = None) -> torch.Tensor:
    """Colour-mapped depth [H, W, 3] (black where empty), over ``[lo, hi]`` or else the range of the pixels the
    field covers (a video passes one range for all frames so that colours do not flicker).

    ``depth`` is the expected distance, not normalised by opacity (as compositing returns it)."""
    d = depth / opacity.clamp_min(1e-6)
    covered = opacity > 0.5
    if lo is None or hi is None:
        lo, hi = (d[covered].min().item(), d[covered].max().item()) if covered.any() else (0.0, 1.0)
    return colormap(d, lo, hi) * opacity[..., None].clamp(0, 1)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def write_png(path: Path, img: torch.Tensor) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, to_uint8(img))
