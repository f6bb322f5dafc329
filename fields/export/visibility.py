"""Which mesh faces the training cameras see: marching cubes also closes surfaces no camera ever observed
(the inside of a solid whose density the field left hollow, floaters hidden behind the surface), and those
faces are guesses, not reconstructions.

A face counts as seen when its centre lies inside some training camera's image (ideal pinhole projection;
lens distortion is ignored, which only matters at the image border) with its front towards that camera, and
the ray from the camera centre to it meets no other part of the mesh first. Rays are cast with open3d's
RaycastingScene (Embree).
"""

from __future__ import annotations

import numpy as np
from rich.progress import Progress

from fields.export import import_open3d
from scenes.cameras import Cameras


def seen_faces(vertices: np.ndarray, faces: np.ndarray, cams: Cameras, tolerance: float,
               progress: Progress | None = None) -> np.ndarray:
    """Boolean mask [F]: faces whose centre some camera of ``cams`` sees unoccluded; a hit within ``tolerance``
    (world units) of the centre counts as the face itself."""
    o3d = import_open3d()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(vertices, np.float32)),
                        o3d.core.Tensor(np.ascontiguousarray(faces, np.uint32)))
    tri = vertices[faces]
    centres = tri.mean(1)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    seen = np.zeros(len(faces), bool)
    c2w = cams.c2w.double().numpy()
    task = progress.add_task("visibility", total=len(cams)) if progress is not None else None
    for k in range(len(cams)):
        todo = np.flatnonzero(~seen)
        eye = c2w[k, :3, 3]
        to_face = centres[todo] - eye
        front = (normals[todo] * to_face).sum(-1) < 0
        cam = to_face @ c2w[k, :3, :3]  # camera coordinates (OpenGL: looking down -Z, +Y up)
        depth = -cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            px = cams.cx[k].item() + cams.fx[k].item() * cam[:, 0] / depth
            py = cams.cy[k].item() - cams.fy[k].item() * cam[:, 1] / depth
        width, height = cams.size(k)
        inside = front & (depth > 0) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
        todo, to_face = todo[inside], to_face[inside]
        dist = np.linalg.norm(to_face, axis=-1)
        rays = np.concatenate([np.broadcast_to(eye, to_face.shape), to_face / dist[:, None]], 1)
        hit = scene.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))["t_hit"].numpy()
        seen[todo[hit >= dist - tolerance]] = True
        if task is not None:
            progress.advance(task)
    return seen
