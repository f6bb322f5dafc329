"""Write a pycolmap model as a scene folder: ``sparse/0/`` (COLMAP's binary model), ``transforms.json``
(nerfstudio's format, as its ``ns-process-data`` writes it) and ``sparse_pc.ply`` (the SfM points, coloured).

``transforms.json`` follows nerfstudio's ``colmap_to_json``: camera-to-world matrices with OpenGL camera axes
(+X right, +Y up, looking down -Z), one top-level set of intrinsics when all images share a camera, else one per
frame, ``camera_model`` OPENCV (or OPENCV_FISHEYE) with the distortion COLMAP fitted, and ``applied_transform``
(3x4), the rotation applied to COLMAP's world. nerfstudio rotates COLMAP's -Y axis to +Z, which assumes the
first camera was held level; we rotate the mean up direction of all cameras to +Z instead, so a capture whose
first photo was tilted still stands upright. The points in ``sparse_pc.ply`` are in the same rotated frame.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scenes.orient import rotation_between

# COLMAP model -> transforms.json keys of its parameters, in COLMAP's order (f: one focal for both axes).
PARAMS = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fl_x", "fl_y", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "p1", "p2"),
    "OPENCV_FISHEYE": ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "k3", "k4"),
}


def up_rotation(model) -> np.ndarray:
    """Rotation [3, 3] of COLMAP's world that turns the registered cameras' mean up direction into +Z."""
    ups = [-model.image(i).cam_from_world().rotation.matrix()[1] for i in model.reg_image_ids()]  # -Y (OpenCV)
    up = np.mean(ups, axis=0)
    if np.linalg.norm(up) < 1e-6:  # cameras in every orientation: no preferred up
        return np.eye(3)
    return rotation_between(up / np.linalg.norm(up), np.array([0.0, 0.0, 1.0]))


def camera_fields(camera) -> dict:
    """nerfstudio's intrinsics keys for one COLMAP camera (``w h fl_x fl_y cx cy`` and distortion)."""
    model = camera.model.name
    if model not in PARAMS:
        raise ValueError(f"camera model {model} has no transforms.json form (use one of {', '.join(PARAMS)})")
    values = dict(zip(PARAMS[model], (float(p) for p in camera.params)))
    if "f" in values:
        values["fl_x"] = values["fl_y"] = values.pop("f")
    out = {"camera_model": "OPENCV_FISHEYE" if model == "OPENCV_FISHEYE" else "OPENCV",
           "w": int(camera.width), "h": int(camera.height)}
    out.update({k: values[k] for k in ("fl_x", "fl_y", "cx", "cy")})
    for k in ("k1", "k2", "k3", "k4") if model == "OPENCV_FISHEYE" else ("k1", "k2", "p1", "p2"):
        out[k] = values.get(k, 0.0)
    return out


def camera_to_world(model, image_id: int, rotation: np.ndarray) -> np.ndarray:
    """Camera-to-world [4, 4] of one registered image in the rotated world, with OpenGL camera axes."""
    w2c = np.eye(4)
    w2c[:3] = model.image(image_id).cam_from_world().matrix()
    c2w = np.linalg.inv(w2c)
    c2w[:3] = rotation @ c2w[:3]
    c2w[:3, 1:3] *= -1  # OpenCV (down, forward) -> OpenGL (up, backward)
    return c2w


def write_transforms(model, path: Path, rotation: np.ndarray, ply_name: str) -> int:
    """Write ``transforms.json`` for the registered images (``images/<name>``); returns the frame count."""
    ids = sorted(model.reg_image_ids(), key=lambda i: model.image(i).name)
    cameras = {model.image(i).camera_id for i in ids}
    shared = len(cameras) == 1
    out = camera_fields(model.camera(cameras.pop())) if shared else {}
    frames = []
    for i in ids:
        image = model.image(i)
        frame = {"file_path": f"images/{image.name}", "transform_matrix": camera_to_world(model, i, rotation).tolist(),
                 "colmap_im_id": int(i)}
        if not shared:
            frame.update(camera_fields(model.camera(image.camera_id)))
        frames.append(frame)
    if not shared:  # one model for the whole file, as nerfstudio's loader expects
        out["camera_model"] = frames[0]["camera_model"]
    out["frames"] = frames
    out["applied_transform"] = np.concatenate([rotation, np.zeros((3, 1))], 1).tolist()
    out["ply_file_path"] = ply_name
    path.write_text(json.dumps(out, indent=2))
    return len(frames)


def write_points(model, path: Path, rotation: np.ndarray) -> int:
    """Write the model's 3-D points with their colours (binary PLY, trimesh), rotated; returns the count."""
    import trimesh

    points = [(p.xyz, p.color) for p in model.points3D.values()]
    xyz = np.array([p for p, _ in points], dtype=np.float64).reshape(-1, 3) @ rotation.T
    rgb = np.array([c for _, c in points], dtype=np.uint8).reshape(-1, 3)
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    path.write_bytes(trimesh.PointCloud(xyz.astype(np.float32), colors=rgba).export(file_type="ply"))
    return len(points)


def write_scene(model, root: Path) -> dict:
    """Write ``sparse/0/``, ``transforms.json`` and ``sparse_pc.ply`` under ``root`` (``images/`` is already
    there); returns counts for the summary."""
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True, exist_ok=True)
    model.write(sparse)
    rotation = up_rotation(model)
    frames = write_transforms(model, root / "transforms.json", rotation, "sparse_pc.ply")
    points = write_points(model, root / "sparse_pc.ply", rotation)
    return {"frames": frames, "points": points}
