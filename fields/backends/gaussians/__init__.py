"""The ``gaussians`` backend (3D Gaussian Splatting): field, config and its splatting ``SplatModel``, adaptive
density control and the spatial index that answers point queries."""

from fields.backends.gaussians.field import GaussianField, GaussiansConfig, SplatModel

__all__ = ["GaussianField", "GaussiansConfig", "SplatModel"]
