"""Renderers: occupancy grid, ray marching into packed samples, compositing and image rendering.

Knows nothing of concrete fields: the volume renderer takes a field's ``geometry`` / ``color`` callables, and a
``VolumeModel`` (field, grid, render settings) is what the layers above render.
"""

from renderers.compositing import composite
from renderers.marching import Samples, march_rays, ray_aabb
from renderers.model import Renderable, VolumeModel
from renderers.occupancy import OccupancyGrid
from renderers.render import RenderConfig, render_image, render_rays, sample_rays

__all__ = ["OccupancyGrid", "RenderConfig", "Renderable", "Samples", "VolumeModel", "composite", "march_rays",
           "ray_aabb", "render_image", "render_rays", "sample_rays"]
