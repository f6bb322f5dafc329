"""The native kernels of ``cuda/`` seen from Python.

- ``loader``: builds (once, cached) and loads the extension; ``native_ops()`` is ``torch.ops.fields`` or ``None``,
  ``ops_for(*tensors)`` the same for tensors the build can run on; ``flushed_denormals``, ``has_native_bf16``.
- ``autograd``: every autograd Function around the native ops.

One rule for every op: its public function and its plain-PyTorch ``*_reference`` (the tests' oracle and the
fallback when the build is missing, ``FIELDS_NATIVE=0``, or the tensors are not float32 on a supported device)
sit side by side in the module of its domain, and the public function asks ``ops_for`` which of the two to run:

=====================  =====================================  ============================================
op                     public function (module)               reference
=====================  =====================================  ============================================
hash encoding          ``hash_encode`` (fields.backends.      ``hash_encode_reference``
                       encodings, ``HashEncoding``)
spherical harmonics    ``sh_encode`` (same)                   ``sh_encode_reference``
fused ReLU MLP         ``relu_mlp`` (fields.backends.         ``relu_mlp_reference``
                       fused_mlp, ``ReLUMLP``)
modulated ReLU         ``modulated_relu`` (same)              ``modulated_relu_reference``
ray marching           ``march_rays`` (renderers.marching)    ``march_rays_reference``
compositing            ``composite``, ``transmittance``       ``composite_reference``,
                       (renderers.compositing)                ``transmittance_reference``
Gaussian splatting     ``project_gaussians``,                 ``project_reference``,
                       ``rasterize_gaussians``                ``rasterize_reference``
                       (renderers.splatting)
=====================  =====================================  ============================================
"""

from renderers.native.loader import (cpu_signature, cpuinfo, enabled, flushed_denormals, has_native_bf16, native_ops,
                                     ops_for)

__all__ = ["cpu_signature", "cpuinfo", "enabled", "flushed_denormals", "has_native_bf16", "native_ops", "ops_for"]
