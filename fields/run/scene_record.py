"""What viewing and exporting a run need from its scene, kept in the run folder as ``cameras.json``: the
training cameras (pinhole or fisheye), the scene box, the background colour, the scene's name, how its
loader moved the dataset's poses (centre, scale and rotation, for nerfstudio camera paths), and where a real
capture's content lies: its near/far bounds (the forward spiral's focus) and the box of the bulk of its SfM
points (the region mesh and point-cloud export of an NDC run keep); records written before these lack them.

Training writes it when it starts, so a run folder copied to another machine without the training images can
still be viewed and exported; only training and ``fields eval`` read the images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fields.run.checkpoint import atomic_write
from fields.run.config import ConfigError
from scenes import SceneSplit
from scenes.cameras import Cameras
from scenes.orient import bulk_box

RECORD_NAME = "cameras.json"
VERSION = 1


@dataclass
class SceneRecord:
    """The training cameras of a run with the scene box, background and dataset frame they belong to."""

    name: str
    cameras: Cameras
    aabb: torch.Tensor  # [2, 3] min and max corner
    background: tuple[float, float, float]
    from_dataset: tuple[tuple[float, float, float], float] = ((0.0, 0.0, 0.0), 1.0)
    from_dataset_rotation: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    near_far: tuple[float, float] | None = None  # the split's near and far bounds (world units)
    points_box: torch.Tensor | None = None  # [2, 3] box of the bulk of the split's SfM points (``bulk_box``)

    @classmethod
    def of(cls, split: SceneSplit) -> "SceneRecord":
        """The record of a loaded training split."""
        return cls(split.name, split.cameras, split.aabb.float().cpu(), tuple(split.background), split.from_dataset,
                   split.from_dataset_rotation, split.near_far, points_box(split))


def points_box(split: SceneSplit) -> torch.Tensor | None:
    """The box [2, 3] of the bulk of a split's SfM points, or None without points."""
    if split.points is None or not len(split.points):
        return None
    return torch.tensor(bulk_box(split.points.double().cpu().numpy()), dtype=torch.float32)


def write_scene_record(run_dir: Path, split: SceneSplit) -> Path:
    """Write ``<run_dir>/cameras.json`` for the training split ``split`` (atomically: a killed process leaves
    the previous file or none, never half of one)."""
    record = SceneRecord.of(split)
    cams, box = record.cameras, record.points_box
    rows = lambda t: t.detach().cpu().double().tolist()  # noqa: E731  float32 values survive the round trip
    centre, scale = record.from_dataset
    data = {"version": VERSION, "scene": record.name, **sizes_record(cams),
            "c2w": rows(cams.c2w), "fx": rows(cams.fx), "fy": rows(cams.fy), "cx": rows(cams.cx), "cy": rows(cams.cy),
            "distortion": None if cams.distortion is None else rows(cams.distortion), "fisheye": cams.fisheye,
            "aabb": rows(record.aabb), "background": [float(c) for c in record.background],
            "from_dataset": {"centre": [float(c) for c in centre], "scale": float(scale),
                             "rotation": [[float(v) for v in row] for row in record.from_dataset_rotation]},
            "near_far": None if record.near_far is None else [float(v) for v in record.near_far],
            "points_box": None if box is None else rows(box)}
    text = json.dumps(data).encode()
    return atomic_write(Path(run_dir) / RECORD_NAME, lambda f: f.write(text))


def sizes_record(cams: Cameras) -> dict[str, int | list[int]]:
    """``width`` and ``height`` as written: one whole number each where every camera has one size (as records
    always had), else one per camera."""
    if bool((cams.width == cams.width[0]).all() and (cams.height == cams.height[0]).all()):
        return {"width": int(cams.width[0]), "height": int(cams.height[0])}
    return {"width": cams.width.tolist(), "height": cams.height.tolist()}


def read_scene_record(path: Path) -> SceneRecord:
    """Read a ``cameras.json``; ConfigError names the file and the first problem found."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: camera record not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON camera record ({e})") from None
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        raise ConfigError(f"{path}: not a fields camera record (expected an object with \"version\": {VERSION})")

    def tensor(value: Any, label: str, shape: tuple[int | None, ...]) -> torch.Tensor:
        try:
            t = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            t = None
        if t is None or t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
            want = " x ".join("N" if s is None else str(s) for s in shape) or "single"
            raise ConfigError(f"{path}: '{label}' must be a {want} array of numbers")
        if not bool(torch.isfinite(t).all()):
            raise ConfigError(f"{path}: '{label}' holds NaN or infinite values")
        return t

    c2w = tensor(raw.get("c2w"), "c2w", (None, 4, 4))
    n = len(c2w)
    size = {k: raw.get(k) for k in ("width", "height")}
    if not all(whole_sizes(v, n) for v in size.values()):
        raise ConfigError(f"{path}: 'width' and 'height' must be positive whole numbers, one for all cameras or "
                          f"one per camera (got {size})")
    fx, fy, cx, cy = (tensor(raw.get(k), k, (n,)) for k in ("fx", "fy", "cx", "cy"))
    if not bool((fx > 0).all() and (fy > 0).all()):
        raise ConfigError(f"{path}: focal lengths 'fx' and 'fy' must be positive")
    distortion = None if raw.get("distortion") is None else tensor(raw["distortion"], "distortion", (n, 4))
    aabb = tensor(raw.get("aabb"), "aabb", (2, 3))
    if not bool((aabb[0] < aabb[1]).all()):
        raise ConfigError(f"{path}: 'aabb' must be [min corner, max corner] with min < max")
    background = tensor(raw.get("background"), "background", (3,))
    frame = raw.get("from_dataset") if isinstance(raw.get("from_dataset"), dict) else {}
    centre = tensor(frame.get("centre"), "from_dataset.centre", (3,))
    scale = tensor(frame.get("scale"), "from_dataset.scale", ())
    if float(scale) == 0.0:
        raise ConfigError(f"{path}: 'from_dataset.scale' must not be 0")
    rotation = tensor(frame.get("rotation", SceneRecord.from_dataset_rotation), "from_dataset.rotation", (3, 3))
    if not torch.allclose(rotation @ rotation.T, torch.eye(3), atol=1e-4):
        raise ConfigError(f"{path}: 'from_dataset.rotation' is not a rotation matrix")
    fisheye = raw.get("fisheye", False)
    if not isinstance(fisheye, bool):
        raise ConfigError(f"{path}: 'fisheye' must be true or false (got {fisheye!r})")
    if not isinstance(raw.get("scene"), str):
        raise ConfigError(f"{path}: 'scene' must be the scene's name")
    near_far = None if raw.get("near_far") is None else tensor(raw["near_far"], "near_far", (2,))
    if near_far is not None and not 0 < near_far[0] < near_far[1]:
        raise ConfigError(f"{path}: 'near_far' must be two distances with 0 < near < far")
    box = None if raw.get("points_box") is None else tensor(raw["points_box"], "points_box", (2, 3))
    if box is not None and not bool((box[0] <= box[1]).all()):
        raise ConfigError(f"{path}: 'points_box' must be [min corner, max corner] with min <= max")
    cams = Cameras(c2w, fx, fy, cx, cy, size["width"], size["height"], distortion, fisheye)
    return SceneRecord(raw["scene"], cams, aabb, tuple(background.tolist()), (tuple(centre.tolist()), float(scale)),
                       tuple(tuple(row) for row in rotation.double().tolist()),
                       None if near_far is None else tuple(near_far.tolist()), box)


def whole_sizes(value: Any, n: int) -> bool:
    """Whether ``value`` is a positive whole number or a list of ``n`` of them (image sizes in a record)."""
    values = value if isinstance(value, list) and len(value) == n else [value]
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
