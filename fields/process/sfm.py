"""Structure-from-motion with pycolmap, in-process: SIFT features, matching, incremental mapping.

pycolmap's calls report no progress, so each stage is cut into pieces that are pycolmap calls of their own:
features are extracted a batch of images at a time, and the image pairs (chosen by pycolmap's own exhaustive or
sequential pair generator) are matched a batch of pairs at a time; the mapper calls back after each image it
registers. Every call uses all cores (``num_threads=-1``). SIFT only: nothing is downloaded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.progress import Progress

Matcher = Literal["auto", "exhaustive", "sequential"]
CameraModel = Literal["OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV_FISHEYE"]
EXHAUSTIVE_UP_TO = 100  # images; beyond, exhaustive matching's n^2/2 pairs take longer than mapping
# pycolmap calls per stage (progress steps). Measured on gerrard_hall (100 photos, 2 cores): extraction in 20
# batches takes as long as in one call (32 s); matching calls each re-read the descriptors of the images they
# touch, so 25 batches cost 14% over one call and 12 batches 3% (73 s against 71 s).
EXTRACT_BATCHES = 20
MATCH_BATCHES = 12
SEQUENTIAL_OVERLAP = 10  # neighbours each image is matched with
SEED = 0  # RANSAC and the mapper: the same input gives the same model


@dataclass
class SfmOptions:
    """Options of structure-from-motion (pycolmap)."""

    matcher: Matcher = "auto"
    """Which image pairs are matched: 'exhaustive' matches every pair (best up to ~100 photos), 'sequential'
    each image with the next 10 and no loop detection (video frames, or photos named in the order they were
    taken), and 'auto' picks sequential for a video or more than 100 photos, else exhaustive."""
    camera_model: CameraModel = "OPENCV"
    """COLMAP camera model fitted to the images (OPENCV: fx fy cx cy k1 k2 p1 p2)."""
    max_feature_size: int = 1600
    """SIFT runs on images downsized to this long side, in pixels."""


@dataclass
class SfmResult:
    """The largest model pycolmap found (None if none), which images it registered, and seconds per stage."""

    reconstruction: object | None  # pycolmap.Reconstruction
    names: list[str]
    registered: list[str]
    matcher: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def unregistered(self) -> list[str]:
        done = set(self.registered)
        return [n for n in self.names if n not in done]


def choose_matcher(matcher: Matcher, num_images: int, from_video: bool) -> str:
    """The matcher ``auto`` stands for, given the input."""
    if matcher != "auto":
        return matcher
    return "sequential" if from_video or num_images > EXHAUSTIVE_UP_TO else "exhaustive"


def _batches(items: list, count: int) -> list[list]:
    size = max(1, math.ceil(len(items) / count))
    return [items[i:i + size] for i in range(0, len(items), size)]


def extract(database: Path, image_dir: Path, names: list[str], options: SfmOptions, single_camera: bool,
            progress: Progress) -> None:
    """SIFT features of ``names`` (files in ``image_dir``) into ``database``; one camera for all images when
    ``single_camera``, else one per image."""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = options.camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = options.max_feature_size
    extraction.num_threads = -1
    mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE
    task = progress.add_task("SIFT features", total=len(names))
    for batch in _batches(names, EXTRACT_BATCHES):
        pycolmap.extract_features(database, image_dir, image_names=batch, camera_mode=mode, reader_options=reader,
                                  extraction_options=extraction)
        if single_camera:  # later batches join the first batch's camera
            reader.existing_camera_id = 1
        progress.advance(task, len(batch))


def image_pairs(database: Path, matcher: str) -> list[tuple[str, str]]:
    """The pairs of image names pycolmap's exhaustive or sequential pair generator picks. Sequential pairs are
    each image with the next ``SEQUENTIAL_OVERLAP``, without COLMAP's "quadratic" pairs (i + 2^k): on a
    150-frame video of a tiled floor those far pairs matched the repeating tiles and folded the trajectory
    (a 100-degree turn between neighbouring frames), which plain neighbours did not. No loop detection: it
    needs a vocabulary tree, which would have to be downloaded."""
    import pycolmap

    db = pycolmap.Database.open(database)
    try:
        names = {im.image_id: im.name for im in db.read_all_images()}
        if matcher == "exhaustive":
            generator = pycolmap.ExhaustivePairGenerator(pycolmap.ExhaustivePairingOptions(), db)
        else:
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = SEQUENTIAL_OVERLAP
            pairing.quadratic_overlap = False
            pairing.loop_detection = False
            generator = pycolmap.SequentialPairGenerator(pairing, db)
        return [(names[a], names[b]) for a, b in generator.all_pairs()]
    finally:
        db.close()


def match(database: Path, pairs: list[tuple[str, str]], work: Path, progress: Progress) -> None:
    """Match SIFT features of every pair and verify them geometrically (RANSAC), a batch of pairs per call."""
    import pycolmap

    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = -1
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = SEED
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = work / "pairs.txt"
    task = progress.add_task("matching pairs", total=len(pairs))
    for batch in _batches(pairs, MATCH_BATCHES):
        (work / "pairs.txt").write_text("".join(f"{a} {b}\n" for a, b in batch))
        pycolmap.match_image_pairs(database, matching_options=matching, pairing_options=pairing,
                                   verification_options=verification)
        progress.advance(task, len(batch))


def map_images(database: Path, image_dir: Path, work: Path, num_images: int, progress: Progress):
    """Incremental mapping; returns the model with the most registered images, or None if it found none."""
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = -1
    options.random_seed = SEED
    task = progress.add_task("registering images", total=num_images)
    count = [0]  # images registered so far, over every model the mapper starts

    def registered(n: int = 1) -> None:
        count[0] += n
        progress.update(task, completed=min(count[0], num_images))

    (work / "models").mkdir(exist_ok=True)
    models = pycolmap.incremental_mapping(database, image_dir, work / "models", options,
                                          initial_image_pair_callback=lambda: registered(2),
                                          next_image_callback=registered)
    progress.update(task, completed=num_images)
    return max(models.values(), key=lambda r: r.num_reg_images(), default=None)


def run_sfm(image_dir: Path, names: list[str], work: Path, options: SfmOptions, single_camera: bool,
            from_video: bool, progress: Progress) -> SfmResult:
    """Extract, match and map the images ``names`` in ``image_dir``; scratch files (the COLMAP database, the
    models) go to ``work``. pycolmap's log is limited to errors meanwhile."""
    import pycolmap

    work.mkdir(parents=True, exist_ok=True)
    database = work / "database.db"
    matcher = choose_matcher(options.matcher, len(names), from_video)
    seconds: dict[str, float] = {}
    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = int(pycolmap.logging.ERROR)
    try:
        tic = time.perf_counter()
        extract(database, image_dir, names, options, single_camera or from_video, progress)
        seconds["features"] = time.perf_counter() - tic
        tic = time.perf_counter()
        match(database, image_pairs(database, matcher), work, progress)
        seconds["matching"] = time.perf_counter() - tic
        tic = time.perf_counter()
        model = map_images(database, image_dir, work, len(names), progress)
        seconds["mapping"] = time.perf_counter() - tic
    finally:
        pycolmap.logging.minloglevel = level
    registered = [] if model is None else sorted(model.image(i).name for i in model.reg_image_ids())
    return SfmResult(model, names, registered, matcher, seconds)
