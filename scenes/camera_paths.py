"""Camera paths for videos: orbit, spiral and interpolation derived from the training cameras, and
nerfstudio ``camera_path`` JSON files.

Derived paths look at the point nearest to every training camera's optical axis (the scene centre of an
object capture), keep the cameras' mean distance, and turn about their mean up vector; except the forward
spiral, which stays in front of a forward-facing capture (an LLFF-style one: orbiting it would show the unseen
back and sides) the way NeRF renders LLFF scenes. ``default_path`` picks it for such captures, the orbit for
the rest. Poses are camera-to-world in the OpenGL convention, like everywhere in fields (and in nerfstudio).

Frames of a nerfstudio camera path: ``ns-render`` feeds the path's ``camera_to_world`` to the model as it is
(``get_path_from_json``), so the poses live in nerfstudio's *dataparser output* frame. For Blender-format
scenes nerfstudio's blender dataparser applies no transform, and that frame is the dataset's own, which is
also ours: such paths work as they are. Its nerfstudio-data dataparser instead orients, centres and scales the
poses and records this in the run's ``dataparser_transforms.json`` (``transform`` T [3, 4], ``scale`` s:
``pose_ns = [R_T R | s (R_T t + t_T)]``). Given that file, a path is mapped back to the dataset frame as
nerfstudio's ``transform_poses_to_original_space`` does (translation / s, then T^-1), then into our world
with the loader's own orientation, centring and scale (``SceneSplit.from_dataset`` and
``from_dataset_rotation``). Without it the path is taken as already in
the run's world frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scenes.cameras import Cameras
from scenes.io import first_line, pose_problem
from scenes.orient import forward_facing

PATH_TYPES = ("orbit", "spiral", "forward-spiral", "interpolate")


class CameraPathError(ValueError):
    """A camera path that cannot be used; the message names the file (or the path kind) and the problem."""


MAX_SIDE = 16384  # pixels per side of a video frame (16K); more is a typo, and memory checks follow anyway


@dataclass
class SceneFrame:
    """Where the training cameras look and from how far: centre [3], unit up [3], mean distance, and the
    elevation angles (radians above the plane normal to ``up``) of the cameras."""

    centre: torch.Tensor
    up: torch.Tensor
    radius: float
    elevations: torch.Tensor


def scene_frame(cams: Cameras) -> SceneFrame:
    """The centre (least-squares intersection of the optical axes), up vector and radius of a camera set."""
    origins = cams.centers.double()
    forward = -torch.nn.functional.normalize(cams.c2w[:, :3, 2].double(), dim=-1)  # cameras look down -Z
    proj = torch.eye(3, dtype=torch.float64) - forward[:, :, None] * forward[:, None, :]  # [N, 3, 3]
    a, b = proj.sum(0), (proj @ origins[:, :, None]).sum(0)[:, 0]
    if len(cams) >= 2 and torch.linalg.cond(a) < 1e6:
        centre = torch.linalg.solve(a, b)
    else:  # parallel axes (one camera, or a forward-facing capture): a point in front of the cameras
        centre = origins.mean(0) + forward.mean(0)
    up = torch.nn.functional.normalize(cams.c2w[:, :3, 1].double().mean(0), dim=0)
    offsets = origins - centre
    dist = offsets.norm(dim=-1).clamp_min(1e-9)
    elevations = torch.asin(((offsets @ up) / dist).clamp(-1, 1))
    return SceneFrame(centre.float(), up.float(), dist.mean().item(), elevations.float())


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Camera-to-world [4, 4] (OpenGL) of a camera at ``eye`` looking at ``target`` with ``up`` roughly up."""
    back = torch.nn.functional.normalize(eye - target, dim=0)
    right = torch.linalg.cross(up, back)
    if right.norm() < 1e-6:  # looking straight along up: any right vector will do
        right = torch.linalg.cross(torch.tensor([1.0, 0.0, 0.0]) if abs(back[0]) < 0.9 else torch.tensor([0.0, 1.0, 0.0]), back)
    right = torch.nn.functional.normalize(right, dim=0)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, torch.linalg.cross(back, right), back, eye
    return c2w


def _around(frame: SceneFrame, start: torch.Tensor, azimuths: torch.Tensor, elevations: torch.Tensor) -> torch.Tensor:
    """Poses at ``azimuths``/``elevations`` on the sphere of ``frame.radius`` about its centre; azimuth 0 is the
    direction of ``start`` (a camera position) projected onto the plane normal to ``up``."""
    up = frame.up
    a = start - frame.centre
    a = a - (a @ up) * up
    if a.norm() < 1e-6:
        a = look_at(torch.zeros(3), -up, up)[:3, 0]  # any direction normal to up
    a = torch.nn.functional.normalize(a, dim=0)
    b = torch.linalg.cross(up, a)
    poses = []
    for az, el in zip(azimuths.tolist(), elevations.tolist()):
        d = math.cos(el) * (math.cos(az) * a + math.sin(az) * b) + math.sin(el) * up
        poses.append(look_at(frame.centre + frame.radius * d, frame.centre, up))
    return torch.stack(poses)


def orbit(cams: Cameras, n_frames: int) -> torch.Tensor:
    """One turn about the up axis at the training cameras' mean elevation and distance, [n_frames, 4, 4]."""
    frame = scene_frame(cams)
    az = torch.arange(n_frames) * (2 * math.pi / n_frames)
    return _around(frame, cams.centers[0], az, torch.full((n_frames,), frame.elevations.mean().item()))


def spiral(cams: Cameras, n_frames: int, turns: float = 2.0) -> torch.Tensor:
    """``turns`` turns about the up axis while the elevation swings once through the training cameras' range."""
    frame = scene_frame(cams)
    t = torch.arange(n_frames) / n_frames
    lo, hi = frame.elevations.min().item(), frame.elevations.max().item()
    el = 0.5 * (lo + hi) + 0.5 * (hi - lo) * torch.sin(2 * math.pi * t)
    return _around(frame, cams.centers[0], 2 * math.pi * turns * t, el)


def focus_depth(near: float, far: float) -> float:
    """NeRF's focus depth for LLFF scenes: three quarters of the way in disparity from 0.9 x the near bound to 5 x
    the far bound (the middle of the content on screen, nearer the front than a mean of depths)."""
    return 1.0 / (0.25 / (0.9 * near) + 0.75 / (5.0 * far))


def forward_spiral(cams: Cameras, n_frames: int, near_far: tuple[float, float], turns: float = 2.0) -> torch.Tensor:
    """NeRF's spiral for forward-facing captures (``render_path_spiral``): ``turns`` turns of an ellipse about the
    mean camera pose, in its plane with radii the 90th percentile of the cameras' offsets from it along its right
    and up axes, moving along its viewing axis by that axis's radius at half the rate; every pose looks at the
    point ``focus_depth`` ahead of the mean pose with the mean up vector, [n_frames, 4, 4]."""
    near, far = near_far
    if not 0 < near < far:
        raise CameraPathError(f"the forward spiral needs near and far bounds with 0 < near < far (got {near}, {far})")
    pose = cams.mean_pose()
    radii = ((cams.centers.double() - pose[:3, 3]) @ pose[:3, :3]).abs().quantile(0.9, dim=0)
    focus = pose[:3, 3] - focus_depth(near, far) * pose[:3, 2]
    theta = torch.arange(n_frames, dtype=torch.float64) * (2 * math.pi * turns / n_frames)
    local = torch.stack([theta.cos(), -theta.sin(), -(0.5 * theta).sin()], -1) * radii  # in the mean pose's frame
    eyes = pose[:3, 3] + local @ pose[:3, :3].T
    return torch.stack([look_at(e, focus, pose[:3, 1]) for e in eyes]).float()


def default_path(cams: Cameras, ndc: bool = False) -> str:
    """The derived path a video of a run takes unless told otherwise: the forward spiral for a forward-facing
    capture (a run in NDC, or cameras that ``scenes.orient.forward_facing`` finds all looking one way), else the
    orbit."""
    return "forward-spiral" if ndc or forward_facing(cams.c2w.double().numpy()) else "orbit"


def catmull_rom(points: torch.Tensor, n_out: int) -> torch.Tensor:
    """``n_out`` samples of the uniform Catmull-Rom spline through ``points`` [K, D] (end points repeated), from
    the first point to the last."""
    k = points.shape[0]
    if k == 1:
        return points.expand(n_out, -1).clone()
    p = torch.cat([points[:1], points, points[-1:]])
    s = torch.linspace(0, k - 1, n_out)
    i = s.floor().long().clamp(max=k - 2)
    t = (s - i)[:, None]
    p0, p1, p2, p3 = p[i], p[i + 1], p[i + 2], p[i + 3]
    return 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                  + (3 * p1 - p0 - 3 * p2 + p3) * t**3)


def interpolate(cams: Cameras, n_frames: int, keyframes: int = 0) -> torch.Tensor:
    """A smooth path through the training cameras in order (every one, or ``keyframes`` evenly spaced ones):
    positions and viewing axes follow Catmull-Rom splines and are re-orthonormalised."""
    idx = torch.arange(len(cams))
    if 0 < keyframes < len(cams):
        idx = torch.linspace(0, len(cams) - 1, keyframes).round().long()
    c2w = cams.c2w[idx]
    pos = catmull_rom(c2w[:, :3, 3], n_frames)
    back = torch.nn.functional.normalize(catmull_rom(c2w[:, :3, 2], n_frames), dim=-1)
    up = catmull_rom(c2w[:, :3, 1], n_frames)
    return torch.stack([look_at(p, p - b, u) for p, b, u in zip(pos, back, up)])


@dataclass
class CameraPath:
    """Poses [N, 4, 4] with their intrinsics, and the frame rate a path file asked for (None: the caller's)."""

    cameras: Cameras
    fps: float | None = None


def read_dataparser_transforms(path: Path) -> tuple[torch.Tensor, float]:
    """``transform`` [3, 4] and ``scale`` of a nerfstudio ``dataparser_transforms.json``."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
        transform, scale = torch.tensor(meta["transform"], dtype=torch.float64), float(meta["scale"])
    except FileNotFoundError:
        raise CameraPathError(f"{path}: dataparser transforms file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise CameraPathError(f"{path}: expected nerfstudio dataparser transforms with 'transform' (3x4) and "
                          f"'scale' ({type(e).__name__}: {e})") from None
    if transform.shape != (3, 4) or not scale > 0:
        raise CameraPathError(f"{path}: 'transform' must be 3x4 and 'scale' positive (got {list(transform.shape)}, "
                          f"{scale})")
    return transform, scale


def nerfstudio_to_world(c2w: torch.Tensor, transform: torch.Tensor, scale: float,
                        from_dataset: tuple[tuple[float, float, float], float],
                        rotation: tuple[tuple[float, float, float], ...] | None = None) -> torch.Tensor:
    """Poses [N, 4, 4] from nerfstudio's dataparser output frame (``transform``, ``scale``) to our world
    (``SceneSplit.from_dataset``: centre and scale of our loader, then ``from_dataset_rotation``)."""
    inverse = torch.linalg.inv(torch.cat([transform, torch.tensor([[0.0, 0, 0, 1]], dtype=torch.float64)]))
    poses = c2w.double().clone()
    poses[:, :3, 3] /= scale
    poses = inverse @ poses  # the dataset's own frame
    centre, world_scale = from_dataset
    rot = torch.eye(3, dtype=torch.float64) if rotation is None else torch.tensor(rotation, dtype=torch.float64)
    poses[:, :3, 3] = (poses[:, :3, 3] - torch.tensor(centre, dtype=torch.float64)) * world_scale
    poses[:, :3, :] = rot @ poses[:, :3, :]
    return poses.float()


def load_camera_path(path: Path, dataparser_transforms: Path | None = None,
                     from_dataset: tuple[tuple[float, float, float], float] | None = None,
                     from_dataset_rotation: tuple[tuple[float, float, float], ...] | None = None) -> CameraPath:
    """A nerfstudio ``camera_path`` JSON (as written by its viewer's render panel): ``render_width``,
    ``render_height``, ``fps`` and ``camera_path`` entries with a 4x4 ``camera_to_world`` and a vertical
    ``fov`` in degrees. Poses are taken in the run's world frame, or mapped into it from nerfstudio's frame
    when its ``dataparser_transforms`` file is given (and our loader's ``from_dataset`` and
    ``from_dataset_rotation``, default: none; see the module docstring)."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise CameraPathError(f"{path}: camera path file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CameraPathError(f"{path}: not valid JSON ({first_line(e)})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("camera_path"), list) or not meta["camera_path"]:
        raise CameraPathError(f"{path}: expected a nerfstudio camera path with a non-empty 'camera_path' list")
    kind = meta.get("camera_type", "perspective")
    if kind != "perspective":
        raise CameraPathError(f"{path}: camera_type '{kind}' is not supported (only 'perspective')")
    width, height = meta.get("render_width"), meta.get("render_height")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (width, height)):
        raise CameraPathError(f"{path}: 'render_width' and 'render_height' must be integers")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise CameraPathError(f"{path}: render size {width}x{height} must be 1 to {MAX_SIDE} pixels per side")
    poses, focals = [], []
    for n, cam in enumerate(meta["camera_path"]):
        try:
            c2w = np.asarray(cam["camera_to_world"], dtype=np.float64).reshape(-1)
            fov = float(cam["fov"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise CameraPathError(f"{path}: camera_path[{n}] needs 'camera_to_world' (16 numbers) and 'fov'") from None
        if c2w.size not in (12, 16) or not 0 < fov < 180:
            raise CameraPathError(f"{path}: camera_path[{n}] has {c2w.size} matrix entries (need 16) or "
                              f"fov {fov} outside (0, 180) degrees")
        c2w = np.concatenate([c2w, [0.0, 0.0, 0.0, 1.0]])[:16].reshape(4, 4)
        if problem := pose_problem(c2w):
            raise CameraPathError(f"{path}: camera_path[{n}] 'camera_to_world' {problem}")
        poses.append(torch.tensor(c2w, dtype=torch.float32))
        focals.append(0.5 * height / math.tan(math.radians(fov) / 2))
    n = len(poses)
    f = torch.tensor(focals)
    c2w = torch.stack(poses)
    if dataparser_transforms is not None:
        c2w = nerfstudio_to_world(c2w, *read_dataparser_transforms(dataparser_transforms),
                                  from_dataset or ((0.0, 0.0, 0.0), 1.0), from_dataset_rotation)
    cams = Cameras(c2w, f, f.clone(), torch.full((n,), width / 2), torch.full((n,), height / 2),
                   width, height)
    fps = meta.get("fps")
    ok = isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps <= 1000
    return CameraPath(cams, float(fps) if ok else None)


def derived_path(train: Cameras, kind: str, n_frames: int, keyframes: int = 0,
                 near_far: tuple[float, float] | None = None) -> CameraPath:
    """An orbit, spiral, forward spiral (which needs the scene's ``near_far`` bounds) or interpolated path with
    the first training camera's intrinsics and image size."""
    if kind == "orbit":
        poses = orbit(train, n_frames)
    elif kind == "spiral":
        poses = spiral(train, n_frames)
    elif kind == "forward-spiral":
        if near_far is None:
            raise CameraPathError("the forward spiral needs the scene's near and far bounds (none were given)")
        poses = forward_spiral(train, n_frames, near_far)
    elif kind == "interpolate":
        poses = interpolate(train, n_frames, keyframes)
    else:
        raise CameraPathError(f"unknown camera path '{kind}' (known: {', '.join(PATH_TYPES)}, or a .json file)")
    one = train[0]
    n = poses.shape[0]
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    cams = Cameras(poses, full(one.fx[0]), full(one.fy[0]), full(one.cx[0]), full(one.cy[0]), *one.size(0))
    return CameraPath(cams)


def resized(cams: Cameras, height: int | None) -> Cameras:
    """The cameras of a path (one size for all) at ``height`` pixels (width by aspect ratio), both rounded to even
    sizes for H.264 video."""
    width, own = cams.size(0)
    h = own if height is None else height
    if h < 2:
        raise CameraPathError(f"video resolution must be at least 2 pixels (got {h})")
    h2 = max(2, h // 2 * 2)
    w2 = max(2, round(width * h2 / own / 2) * 2)
    return cams.resized(w2, h2)
