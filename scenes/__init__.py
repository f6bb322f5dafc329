"""Scenes: cameras, dataset loaders (Blender, nerfstudio), the embedded procedural scene and the registry."""

from scenes.cameras import Cameras, image_rays, pixel_rays
from scenes.io import SceneError
from scenes.registry import find_scene, load_split
from scenes.scene import SceneSplit

__all__ = ["Cameras", "SceneError", "SceneSplit", "find_scene", "image_rays", "load_split", "pixel_rays"]
