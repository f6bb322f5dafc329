"""The ``gaussians`` backend (3D Gaussian Splatting): field and config, adaptive density control, point
queries and the 3DGS PLY format."""

from fields.backends.gaussians.field import GaussianField, GaussiansConfig

__all__ = ["GaussianField", "GaussiansConfig"]
