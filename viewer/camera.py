"""Conversions between viser's camera poses and the `Cameras` record the renderer takes.

viser reports and accepts poses as ``wxyz`` (rotation camera -> world) and ``position`` in the OpenCV
convention (+X right, +Y down, the camera looks down +Z), with a vertical field of view. `scenes` uses the
OpenGL convention (+Y up, looking down -Z); the two differ by flipping the camera's Y and Z axes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import viser.transforms as vtf

from scenes.camera_paths import scene_frame
from scenes.cameras import Cameras

OVERVIEW_FOV = math.radians(50)  # vertical field of view of the opening view
OVERVIEW_ELEVATION = math.radians(30)  # its height above the scene centre's horizontal plane
OVERVIEW_DISTANCE = 1.5  # its least distance from the scene centre, in farthest-camera distances

# Right-multiplying a camera-to-world rotation by this flips the camera's Y and Z axes (OpenCV <-> OpenGL).
FLIP_YZ = np.diag([1.0, -1.0, -1.0])


def viser_to_c2w(wxyz: np.ndarray, position: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world [4, 4] for a viser (OpenCV) pose."""
    c2w = np.eye(4)
    c2w[:3, :3] = vtf.SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix() @ FLIP_YZ
    c2w[:3, 3] = np.asarray(position, dtype=np.float64)
    return c2w


def c2w_to_viser(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """viser (OpenCV) ``wxyz`` and ``position`` for an OpenGL camera-to-world matrix."""
    c2w = np.asarray(c2w, dtype=np.float64)
    rot = c2w[:3, :3] @ FLIP_YZ
    u, _, vt = np.linalg.svd(rot)  # re-orthonormalise: float32 poses are not exactly rotations
    return vtf.SO3.from_matrix(u @ vt).wxyz, c2w[:3, 3].copy()


def image_size(aspect: float, max_side: int) -> tuple[int, int]:
    """(width, height) with the given aspect ratio whose longer side is ``max_side`` pixels."""
    if aspect >= 1:
        return max_side, max(1, round(max_side / aspect))
    return max(1, round(max_side * aspect)), max_side


def viewer_camera(wxyz: np.ndarray, position: np.ndarray, fov_y: float, width: int, height: int) -> Cameras:
    """A single pinhole camera for a viser pose with vertical field of view ``fov_y`` (radians)."""
    focal = 0.5 * height / math.tan(0.5 * fov_y)
    c2w = torch.from_numpy(viser_to_c2w(wxyz, position)).float()[None]
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return Cameras(c2w, one(focal), one(focal), one(width / 2), one(height / 2), width, height)


def vertical_fov(cams: Cameras, i: int) -> float:
    """Vertical field of view (radians) of camera ``i``."""
    return 2.0 * math.atan(0.5 * cams.size(i)[1] / cams.fy[i].item())


def overview(cams: Cameras, aabb: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eye, target and up of a view of the whole scene: 30 degrees above the scene centre (where the training
    cameras' optical axes meet), on the side of the first camera, looking at the centre from outside the
    cameras' sphere and far enough for the scene box to fit in ``OVERVIEW_FOV``. The viewer opens there rather
    than inside a training camera's frustum."""
    frame = scene_frame(cams)
    centre, up = frame.centre.double().numpy(), frame.up.double().numpy()
    side = cams.centers[0].double().numpy() - centre
    side -= (side @ up) * up
    if np.linalg.norm(side) < 1e-6:  # the first camera looks straight down: any horizontal direction
        side = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    side /= np.linalg.norm(side)
    reach = float(np.linalg.norm(cams.centers.double().numpy() - centre, axis=-1).max())
    lo, hi = aabb.double().cpu().numpy()
    corners = np.stack(np.meshgrid(*zip(lo, hi), indexing="ij"), -1).reshape(-1, 3)
    box = float(np.linalg.norm(corners - centre, axis=-1).max())  # a sphere about the centre that holds the box
    distance = max(OVERVIEW_DISTANCE * reach, box / math.sin(OVERVIEW_FOV / 2))
    direction = math.cos(OVERVIEW_ELEVATION) * side + math.sin(OVERVIEW_ELEVATION) * up
    return centre + distance * direction, centre, up
