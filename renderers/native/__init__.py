"""The native kernels of ``cuda/`` seen from Python.

- ``loader``: builds (once, cached) and loads the extension; ``native_ops()`` is ``torch.ops.fields`` or ``None``,
  ``ops_for(*tensors)`` the same for tensors the build can run on; ``flushed_denormals``, ``has_native_bf16``.
- ``autograd``: every autograd Function around the native ops.

One rule for every op: its public function and its plain-PyTorch ``*_reference`` (the tests' oracle, and the
fallback when the build is missing, ``FIELDS_NATIVE=0``, or the tensors are not float32 on a supported device) sit
side by side in the module of its domain, and the public function asks ``ops_for`` which of the two to run:

- hash encoding: ``fields.backends.encodings.hash_encode`` / ``hash_encode_reference``
- spherical harmonics (CPU): ``fields.backends.encodings.sh_encode`` / ``sh_encode_reference``
- Gaussians' SH colours: ``fields.backends.encodings.sh_color`` / ``sh_color_reference``
- fused ReLU MLP (CPU): ``fields.backends.fused_mlp.relu_mlp`` / ``relu_mlp_reference``
- modulated ReLU (CPU): ``fields.backends.fused_mlp.modulated_relu`` / ``modulated_relu_reference``
- ray marching: ``renderers.marching.march_rays`` / ``march_rays_reference``
- compositing: ``renderers.compositing.composite``, ``transmittance``, ``composite_round`` / ``composite_reference``,
  ``transmittance_reference``, ``composite_round_reference``
- Gaussian splatting: ``renderers.splatting.project_gaussians``, ``rasterize_gaussians`` / ``project_reference``,
  ``rasterize_reference``
- SSIM (CPU): ``renderers.imaging.ssim_map`` / ``ssim_map_reference`` (kornia's)
"""

from renderers.native.loader import (cpu_signature, cpuinfo, enabled, flushed_denormals, has_native_bf16, native_ops,
                                     ops_for)

__all__ = ["cpu_signature", "cpuinfo", "enabled", "flushed_denormals", "has_native_bf16", "native_ops", "ops_for"]
