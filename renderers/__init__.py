"""Renderers: occupancy grid, ray marching into packed samples, compositing and image rendering.

Knows nothing of concrete fields: everything takes ``density_fn`` / ``radiance_fn`` callables.
"""

from renderers.compositing import composite
from renderers.marching import Samples, march_rays, ray_aabb
from renderers.occupancy import OccupancyGrid
from renderers.render import RenderConfig, render_image, render_rays, sample_rays

__all__ = ["OccupancyGrid", "RenderConfig", "Samples", "composite", "march_rays", "ray_aabb", "render_image",
           "render_rays", "sample_rays"]
