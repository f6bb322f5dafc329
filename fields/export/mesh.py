"""Mesh export: density on a grid over the scene box (or a world region), marching cubes, optional clean-up,
vertex colours.

The density is evaluated only where the run's occupancy grid (dilated by one cell) says there is content;
elsewhere it is taken as zero, which is what the renderer assumes too. The iso-level defaults to the density
at which one marching step of the run's renderer becomes ``opacity`` opaque, so it follows the field's own
scale rather than a constant tuned for one scene.

A run in NDC (a forward-facing capture) has its field in the reference camera's NDC space, which reaches to
infinity: its lattice covers a world region (``fields/export/region.py``: by default the box of the bulk of the
SfM points), each world point beyond the near plane is looked up at its NDC position, and the NDC density (per
NDC distance) is turned into world density by ``NDC.density_scale`` (NDC per world distance along the ray from
the reference camera), so a threshold means the same as for other runs. Its default threshold is the NDC one
(one marching step of the renderer ``opacity`` opaque) in world units at the middle of the region; its colours
are the field's as the reference camera sees each vertex. Faces that no training camera sees are dropped (see
``fields/export/visibility.py``): inside a solid the field's density is never supervised, and marching cubes
would otherwise close hollow interiors with surfaces nobody observed. Vertex colours come from the field
looking at each vertex along its inverted normal, i.e. as a camera facing the surface would see it.

GLB files are written y-up, as glTF requires (our world frame is z-up): ``write_mesh`` rotates the mesh by
``Z_UP_TO_Y_UP`` for GLB only; PLY and OBJ keep the run's world coordinates.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from rich.progress import Progress
from skimage import measure

from fields.backends.base import Field
from fields.export import ExportError, import_open3d, rgba8
from fields.export.visibility import seen_faces
from renderers.chunks import map_chunks
from renderers.model import VolumeModel
from renderers.render import RenderConfig
from scenes.cameras import Cameras
from scenes.memory import available_bytes, gigabytes

FORMATS = ("ply", "obj", "glb")
BYTES_PER_VOXEL = 16  # the float32 density grid, and skimage's float64 copy of it for marching cubes
# World z-up -> glTF y-up (x stays, z becomes y, y becomes -z): a rotation, so handedness and winding are kept.
Z_UP_TO_Y_UP = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])


def default_threshold(render_cfg: RenderConfig, aabb: torch.Tensor, opacity: float = 0.05) -> float:
    """The density at which one marching step (``render_cfg.step_size``) reaches ``opacity``:
    ``1 - exp(-sigma * step) = opacity``."""
    return -math.log1p(-opacity) / render_cfg.step_size(aabb)


def lattice_points(aabb: torch.Tensor, resolution: int) -> list[torch.Tensor]:
    """Coordinates of ``resolution`` evenly spaced samples per axis, from one face of the box to the other."""
    return [torch.linspace(aabb[0, a].item(), aabb[1, a].item(), resolution) for a in range(3)]


def field_points(model: VolumeModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World points [N, 3] where the model's field lives: their positions there, whether each is there at all
    (an NDC field holds only points beyond the near plane), and the world density per unit of field density."""
    ndc = getattr(model, "ndc", None)
    if ndc is None:
        return x, torch.ones(len(x), dtype=torch.bool), torch.ones(len(x))
    valid = ndc.beyond_near(x)
    q, scale = x.clone(), torch.zeros(len(x))
    q[valid], scale[valid] = ndc.from_world(x[valid]), ndc.density_scale(x[valid])
    return q, valid, scale


@torch.no_grad()
def density_volume(model: VolumeModel, resolution: int, region: torch.Tensor | None = None, chunk: int = 1 << 17,
                   progress: Progress | None = None) -> np.ndarray:
    """The field's world density [R, R, R] (x, y, z order) at the lattice points over ``region`` [2, 3] (default:
    the field's box), zero in empty cells of the grid, outside it and on the region's faces."""
    if resolution < 2:
        raise ExportError(f"mesh resolution must be at least 2 (got {resolution})")
    field, grid = model.field, model.grid
    xs, ys, zs = lattice_points(field.aabb if region is None else region, resolution)
    # Dilate by one cell so that lattice points just outside an occupied cell are still evaluated.
    occupied = torch.nn.functional.max_pool3d(grid.binary[None, None].float(), 3, 1, 1)[0, 0] > 0
    volume = torch.zeros(resolution, resolution, resolution)
    task = progress.add_task("density", total=resolution) if progress is not None else None
    for i, x in enumerate(xs):  # one x-slice at a time keeps memory flat at any resolution
        yy, zz = torch.meshgrid(ys, zs, indexing="ij")
        q, valid, scale = field_points(model, torch.stack([torch.full_like(yy, x.item()), yy, zz], -1).reshape(-1, 3))
        ijk, inside = grid.cells(q)
        keep = (occupied[ijk[:, 0], ijk[:, 1], ijk[:, 2]] & inside & valid).nonzero()[:, 0]
        if keep.numel():
            sigma = torch.cat(map_chunks(field.density, (q[keep],), chunk))
            volume[i].view(-1)[keep] = sigma.float() * scale[keep]
        if task is not None:
            progress.advance(task)
    volume[[0, -1]] = 0  # closes surfaces that reach the box instead of leaving them open there
    volume[:, [0, -1]] = 0
    volume[:, :, [0, -1]] = 0
    return volume.numpy()


def marching_cubes(volume: np.ndarray, threshold: float, aabb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (world units) and faces of the ``threshold`` iso-surface of a lattice over ``aabb``, oriented
    so that face normals point out of the dense region."""
    lo, hi = float(volume.min()), float(volume.max())
    if not lo < threshold < hi:
        raise ExportError(f"no surface: the density never crosses the threshold {threshold:.4g} "
                          f"(it ranges over [{lo:.4g}, {hi:.4g}]); pass a --threshold in that range")
    box = aabb.numpy().astype(np.float64)
    spacing = (box[1] - box[0]) / (np.array(volume.shape) - 1)
    verts, faces, _, _ = measure.marching_cubes(volume, level=threshold, spacing=tuple(spacing))
    return verts + box[0], faces[:, ::-1].astype(np.int64)  # skimage winds them inwards for dense insides


def clean(vertices: np.ndarray, faces: np.ndarray, min_component: float = 0.05,
          target_faces: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Drop connected components with fewer than ``min_component`` times the faces of the largest one (floaters),
    and optionally simplify to ``target_faces`` by quadric decimation (open3d)."""
    o3d = import_open3d()
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces))
    mesh.remove_duplicated_vertices()
    mesh.remove_degenerate_triangles()
    clusters, sizes, _ = mesh.cluster_connected_triangles()
    clusters, sizes = np.asarray(clusters), np.asarray(sizes)
    if sizes.size:
        mesh.remove_triangles_by_mask(sizes[clusters] < min_component * sizes.max())
    mesh.remove_unreferenced_vertices()
    if target_faces is not None and len(mesh.triangles) > target_faces:
        mesh = mesh.simplify_quadric_decimation(target_number_of_triangles=int(target_faces))
        mesh.remove_unreferenced_vertices()
    return np.asarray(mesh.vertices), np.asarray(mesh.triangles).astype(np.int64)


def mesh_threshold(model: VolumeModel, settings: "MeshSettings", region: torch.Tensor | None) -> float:
    """The iso-level in world density: ``settings.threshold``, else ``default_threshold`` (of an NDC run, in
    world units at the middle of ``region``)."""
    if settings.threshold is not None:
        return settings.threshold
    threshold = default_threshold(model.render_cfg, model.field.aabb, settings.opacity)
    if getattr(model, "ndc", None) is None:
        return threshold
    middle = region.mean(0, keepdim=True)
    _, valid, scale = field_points(model, middle)
    if not bool(valid[0]):
        raise ExportError(f"the middle of the mesh region {region.flatten().tolist()} lies before the run's NDC near "
                          "plane, where its field holds nothing; crop further out or pass --threshold")
    return threshold * float(scale[0])


def colour_queries(model: VolumeModel, vertices: np.ndarray, normals: np.ndarray
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where and in which direction the field is asked each vertex's colour: at the vertex looking along its
    inverted normal (as a camera facing the surface), or in NDC at its NDC position (clamped into the field's
    box) looking from the reference camera's centre, NDC's +z (the way a forward-facing capture saw it)."""
    x = torch.tensor(np.asarray(vertices), dtype=torch.float32)
    ndc = getattr(model, "ndc", None)
    if ndc is None:
        return x, -torch.nn.functional.normalize(torch.tensor(np.asarray(normals), dtype=torch.float32), dim=-1)
    aabb = model.field.aabb
    return torch.maximum(torch.minimum(ndc.from_world(x), aabb[1]), aabb[0]), torch.tensor([0.0, 0.0, 1.0]).expand(len(x), 3)


@torch.no_grad()
def vertex_colors(field: Field, x: torch.Tensor, d: torch.Tensor, chunk: int = 1 << 16,
                  progress: Progress | None = None) -> np.ndarray:
    """Colours [V, 3] in [0, 1] of the field at points ``x`` [V, 3] seen along unit directions ``d`` [V, 3]."""
    task = progress.add_task("colours", total=len(x)) if progress is not None else None

    def colour(xc: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
        if task is not None:
            progress.advance(task, len(xc))
        return field(xc, dc)[1].clamp(0, 1)

    out = map_chunks(colour, (x, d), chunk)
    return torch.cat(out).numpy() if out else np.zeros((0, 3), np.float32)


@dataclass
class MeshSettings:
    """How a mesh is extracted; see ``fields export mesh --help`` for each option."""

    resolution: int = 256
    threshold: float | None = None
    opacity: float = 0.05
    clean: bool = True
    min_component: float = 0.05
    target_faces: int | None = None
    seen_only: bool = True
    region: torch.Tensor | None = None  # world box [2, 3] of the lattice (None: the field's box; not for NDC)


def check_mesh_memory(resolution: int) -> None:
    """ExportError with the largest resolution that fits, when the density grid would not fit in memory."""
    need, free = resolution**3 * BYTES_PER_VOXEL, available_bytes()
    if need > free:
        fits = int((free / BYTES_PER_VOXEL) ** (1 / 3))
        raise ExportError(f"mesh --resolution {resolution} needs about {gigabytes(need)} of memory, more than the "
                          f"{gigabytes(free)} available; use --resolution {fits} or lower")


def extract_mesh(model: VolumeModel, settings: MeshSettings, cameras: Cameras | None, show_progress: bool = True,
                 progress: Progress | None = None) -> tuple[trimesh.Trimesh, float]:
    """A vertex-coloured mesh of the model's surface (its field's density, in occupied cells of its grid) and the
    density threshold used, over ``settings.region``: the run's default is ``export_region(model, record)``,
    which an NDC run needs (its field has no world box). With
    ``settings.seen_only`` only faces that some of ``cameras`` (the training cameras) sees are kept.
    Progress goes to ``progress`` when given (the caller shows or polls it), else to a console bar."""
    check_mesh_memory(settings.resolution)
    if settings.target_faces is not None and settings.target_faces < 4:
        raise ExportError(f"--target-faces must be at least 4 (got {settings.target_faces})")
    if not 0 < settings.opacity < 1:
        raise ExportError(f"--opacity must be in (0, 1) (got {settings.opacity})")
    if settings.seen_only and cameras is None:
        raise ExportError("keeping only the faces the training cameras see needs the cameras (or --no-seen-only)")
    region = settings.region
    if region is None and model.ndc is not None:
        raise ExportError("an NDC run's field has no world box: its mesh needs a region (export_region)")
    box = model.field.aabb if region is None else region
    threshold = mesh_threshold(model, settings, region)
    bar = nullcontext(progress) if progress is not None else Progress(disable=not show_progress, transient=True)
    with bar as progress:
        volume = density_volume(model, settings.resolution, region, progress=progress)
        vertices, faces = marching_cubes(volume, threshold, box)
        if settings.seen_only:
            voxel = ((box[1] - box[0]).max().item()) / (settings.resolution - 1)
            faces = faces[seen_faces(vertices, faces, cameras, 2 * voxel, progress)]
            if not len(faces):
                raise ExportError("no surface: none of the mesh's faces is seen by a training camera")
        if settings.clean or settings.target_faces is not None:
            vertices, faces = clean(vertices, faces, settings.min_component, settings.target_faces)
        mesh = trimesh.Trimesh(vertices, faces, process=False)
        colors = vertex_colors(model.field, *colour_queries(model, mesh.vertices, mesh.vertex_normals),
                               progress=progress)
    mesh.visual.vertex_colors = rgba8(colors)
    return mesh, threshold


def write_mesh(mesh: trimesh.Trimesh, path: Path) -> None:
    """Write ``mesh`` as PLY, OBJ or GLB, chosen by the file's suffix; GLB is rotated to glTF's y-up."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ExportError(f"{path}: unknown mesh format '{fmt}' (known: {', '.join(FORMATS)})")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "glb":
        mesh = mesh.copy()
        mesh.apply_transform(Z_UP_TO_Y_UP)
    mesh.export(path, file_type=fmt)
