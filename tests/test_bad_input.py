"""Bad input, fuzzed with hypothesis: Blender and nerfstudio transforms files, their images, and camera-path
files. Every case either loads or raises the module's error with one line naming the file; nothing else
escapes. Also: paths that leave the data folder, decompression bombs, and the CLI showing no tracebacks."""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_blender, write_nerfstudio
from scenes.camera_paths import CameraPathError, load_camera_path
from scenes import SceneError, load_split

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=int(os.environ.get("FIELDS_FUZZ_EXAMPLES", 40)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

# Any JSON value, including the ones Python's json module accepts beyond the standard (NaN, Infinity).
scalars = (st.none() | st.booleans() | st.integers(-(10**400), 10**400) | st.floats() | st.text(max_size=6)
           | st.sampled_from([0, -1, 1e308, float("nan"), float("inf"), "../../etc/passwd", "/etc/passwd", ""]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
    st.text(max_size=6), inner, max_size=4), max_leaves=10)
matrices = st.lists(st.lists(st.floats(-10, 10) | st.sampled_from([float("nan"), float("inf")]), min_size=3,
                             max_size=5), min_size=3, max_size=5)


def paths_in(doc, prefix=()):
    """Every (container, key) position in a JSON document."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for k, v in items:
        yield prefix + (k,)
        yield from paths_in(v, prefix + (k,))


def mutate(doc, data):
    """``doc`` with one position replaced, deleted, or given a random matrix; or a different document."""
    doc = copy.deepcopy(doc)
    action = data.draw(st.sampled_from(["replace", "delete", "matrix", "whole"]))
    if action == "whole":
        return data.draw(json_values)
    where = data.draw(st.sampled_from(list(paths_in(doc))))
    parent = doc
    for k in where[:-1]:
        parent = parent[k]
    if action == "delete":
        del parent[where[-1]]
    else:
        parent[where[-1]] = data.draw(matrices if action == "matrix" else json_values)
    return doc


def assert_one_line_error(e: Exception, folder: Path) -> None:
    msg = str(e)
    assert "\n" not in msg, msg
    assert msg.startswith(str(folder)), msg  # names the file (or the folder) at fault


def check_loads_or_scene_error(root: Path) -> None:
    try:
        split = load_split(root, "train")
    except SceneError as e:
        assert_one_line_error(e, root)
    else:
        assert np.isfinite(split.cameras.c2w.numpy()).all() and (split.cameras.fx > 0).all()


@pytest.fixture(scope="module")
def blender_scene(tmp_path_factory):
    return write_blender(tmp_path_factory.mktemp("fuzz") / "blender", n=2, size=4)


@pytest.fixture(scope="module")
def nerfstudio_scene(tmp_path_factory):
    return write_nerfstudio(tmp_path_factory.mktemp("fuzz") / "ns", n=3, w=4, h=4)


def load_with(root: Path, name: str, content: bytes) -> None:
    """Replace the scene's file ``name`` by ``content``, check it loads or fails cleanly, and put it back."""
    path = root / name
    original = path.read_bytes()
    try:
        path.write_bytes(content)
        check_loads_or_scene_error(root)
    finally:
        path.write_bytes(original)


def mutated(path: Path, data) -> bytes:
    return json.dumps(mutate(json.loads(path.read_text()), data)).encode()


@FUZZ
@given(data=st.data())
def test_fuzzed_blender_transforms(blender_scene, data):
    load_with(blender_scene, "transforms_train.json", mutated(blender_scene / "transforms_train.json", data))


@FUZZ
@given(data=st.data())
def test_fuzzed_nerfstudio_transforms(nerfstudio_scene, data):
    load_with(nerfstudio_scene, "transforms.json", mutated(nerfstudio_scene / "transforms.json", data))


@FUZZ
@given(raw=st.binary(max_size=64) | st.sampled_from([b"", b"{", b"[" * 100_000, b"\xff\xfe{}", b"NaN"]))
def test_fuzzed_json_bytes(nerfstudio_scene, raw):
    load_with(nerfstudio_scene, "transforms.json", raw)


def png(width: int, height: int, depth: int, color_type: int, data: bytes) -> bytes:
    """A PNG file from its header fields and raw scanline bytes (Pillow cannot write 16-bit colour)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` 8-bit RGBA pixels, with a little data: decoding it would
    allocate the claimed size."""
    return png(width, height, 8, 6, b"\0" * 4096)


def png_rgb16(img: np.ndarray) -> bytes:
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in img)  # filter byte 0, big-endian samples
    return png(img.shape[1], img.shape[0], 16, 2, rows)


READABLE = ("gray8", "gray16", "rgb16", "rgb", "bigger", "jpeg", "bool")
IMAGE_KINDS = ["missing", "empty", "truncated", "garbage", "gray8", "gray16", "rgb16", "rgb", "bigger", "bomb",
               "directory", "jpeg", "bool"]


def write_image(path: Path, kind: str, cut: float) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    rng = np.random.default_rng(0)
    if kind == "missing":
        return
    if kind == "directory":
        path.mkdir()
    elif kind in ("empty", "garbage"):
        path.write_bytes(b"" if kind == "empty" else rng.integers(0, 255, 100, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        iio.imwrite(path, rng.integers(0, 255, (4, 4, 4), dtype=np.uint8), extension=".png")
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
    elif kind == "bomb":
        path.write_bytes(png_header(100_000, 100_000))
    elif kind == "rgb16":
        path.write_bytes(png_rgb16(rng.integers(0, 65535, (4, 4, 3), dtype=np.uint16)))
    else:
        img = {"gray8": rng.integers(0, 255, (4, 4), dtype=np.uint8),
               "gray16": rng.integers(0, 65535, (4, 4), dtype=np.uint16),
               "rgb": rng.integers(0, 255, (4, 4, 3), dtype=np.uint8),
               "bigger": rng.integers(0, 255, (6, 4, 4), dtype=np.uint8),
               "jpeg": rng.integers(0, 255, (4, 4, 3), dtype=np.uint8),
               "bool": rng.integers(0, 2, (4, 4)).astype(bool)}[kind]
        iio.imwrite(path, img, extension=".jpg" if kind == "jpeg" else ".png")


@FUZZ
@given(kinds=st.lists(st.sampled_from(IMAGE_KINDS), min_size=2, max_size=2), cut=st.floats(0.0, 0.99))
def test_fuzzed_images(blender_scene, kinds, cut):
    files = [blender_scene / "train" / f"r_{i}.png" for i in range(2)]
    originals = [f.read_bytes() for f in files]
    try:
        for f, kind in zip(files, kinds):
            write_image(f, kind, cut)
        broken = [k for k in kinds if k not in READABLE and k != "truncated"]  # a cut after the pixels may load
        try:
            split = load_split(blender_scene, "train")
        except SceneError as e:
            assert_one_line_error(e, blender_scene)
            assert any(str(e).startswith(str(f.with_suffix(""))) for f in files), e  # Blender paths omit '.png'
            assert broken or "truncated" in kinds, e
        else:
            assert not broken  # images of different sizes load, each at its own
            assert [split.images.size(i) for i in range(2)] == [(4, 6 if k == "bigger" else 4) for k in kinds]
            assert split.images.pixels.dtype == torch.uint8 and 0 <= split.rgba(1).min() <= split.rgba(1).max() <= 1
    finally:
        for f, data in zip(files, originals):
            write_image(f, "missing", 0)
            f.write_bytes(data)


def test_a_decompression_bomb_is_refused_from_its_header(blender_scene, tmp_path):
    root = write_blender(tmp_path / "bomb", n=2, size=4)
    (root / "train" / "r_1.png").write_bytes(png_header(10_000, 10_000))
    with pytest.raises(SceneError, match=r"r_1.png: image header claims 10000x10000 pixels, .*decompression bomb"):
        load_split(root, "train")
    (root / "train" / "r_1.png").write_bytes(png_header(100_000, 100_000))  # above Pillow's own limit
    with pytest.raises(SceneError, match=r"r_1.png: image header claims more than .*decompression bomb"):
        load_split(root, "train")


def test_images_that_do_not_fit_in_memory_are_refused_with_advice(blender_scene, monkeypatch):
    import scenes.io

    monkeypatch.setattr(scenes.io, "available_bytes", lambda: 100)  # 2 images of 4x4 take 128 bytes in 8 bits
    with pytest.raises(SceneError, match=r"2 images of 4x4 need about .* pass --downscale 2 or larger"):
        load_split(blender_scene, "train")
    assert load_split(blender_scene, "train", downscale=2).images.stacked().shape == (2, 2, 2, 4)  # the advice works


# -- paths out of the data folder ------------------------------------------------------------------------------
@pytest.mark.parametrize("escape", ["../outside/secret.png", "ABSOLUTE", "link/secret.png"])
def test_file_paths_out_of_the_scene_folder_are_refused_unless_allowed(tmp_path, escape):
    root = write_blender(tmp_path / "scene", n=2, size=4)
    (tmp_path / "outside").mkdir()
    shutil.copy(root / "train" / "r_0.png", tmp_path / "outside" / "secret.png")
    (root / "link").symlink_to(tmp_path / "outside")
    file_path = str(tmp_path / "outside" / "secret.png") if escape == "ABSOLUTE" else escape
    meta = json.loads((root / "transforms_train.json").read_text())
    meta["frames"][1]["file_path"] = file_path
    (root / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(SceneError, match=r"transforms_train.json: 'file_path' in frames\[1\] .* leads outside the "
                                         r"scene folder .*--allow-outside-data"):
        load_split(root, "train")
    assert load_split(root, "train", allow_outside=True).images.stacked().shape == (2, 4, 4, 4)


def test_etc_passwd_is_not_read(tmp_path):
    root = write_nerfstudio(tmp_path / "ns", n=2, w=4, h=4)
    meta = json.loads((root / "transforms.json").read_text())
    meta["frames"][1]["file_path"] = "../../../../../../../../etc/passwd"
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(SceneError, match="leads outside the scene folder"):
        load_split(root, "train")


# -- camera paths ----------------------------------------------------------------------------------------------
def camera_path_doc() -> dict:
    c2w = np.eye(4)
    c2w[2, 3] = 3.0
    return {"camera_type": "perspective", "render_width": 8, "render_height": 6, "fps": 24,
            "camera_path": [{"camera_to_world": c2w.reshape(-1).tolist(), "fov": 50.0} for _ in range(2)]}


@FUZZ
@given(data=st.data())
def test_fuzzed_camera_paths(tmp_path, data):
    path = tmp_path / "path.json"
    path.write_text(json.dumps(mutate(camera_path_doc(), data)))
    try:
        cams = load_camera_path(path).cameras
    except CameraPathError as e:
        assert_one_line_error(e, path)
    else:
        assert np.isfinite(cams.c2w.numpy()).all() and (cams.fx > 0).all() and (cams.width >= 1).all()


def test_camera_path_rejects_non_rigid_and_nan_matrices(tmp_path):
    doc = camera_path_doc()
    doc["camera_path"][1]["camera_to_world"][0] = 2.0  # scales x
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(CameraPathError, match=r"p.json: camera_path\[1\].*not a rigid"):
        load_camera_path(tmp_path / "p.json")
    doc["camera_path"][1]["camera_to_world"][0] = float("nan")
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(CameraPathError, match=r"p.json: camera_path\[1\].*NaN"):
        load_camera_path(tmp_path / "p.json")


# -- the command line ------------------------------------------------------------------------------------------
def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fields.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=300)


def test_cli_bad_scene_and_camera_path_give_one_line_and_exit_2(tmp_path):
    root = write_blender(tmp_path / "scene", n=2, size=4)
    (root / "train" / "r_1.png").write_bytes(png_header(100_000, 100_000))
    (tmp_path / "path.json").write_text('{"camera_path": [{"camera_to_world": [1e999], "fov": 50}]')
    for args, expected in [(["train", "--data", str(root), "--quiet"], "decompression bomb"),
                           (["export", "video", str(tmp_path / "no-run"), "--path", str(tmp_path / "path.json")],
                            "path.json: not valid JSON")]:
        out = run_cli(*args)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "Traceback" not in out.stdout + out.stderr
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], out.stdout


def test_unexpected_errors_are_one_line_unless_debug(monkeypatch, capsys):
    import fields.cli as cli

    def boom(self):
        raise KeyError("surprise")

    monkeypatch.setattr(cli.Eval, "run", boom)
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "somewhere"])
    out = capsys.readouterr().out
    assert e.value.code == 1 and "Traceback" not in out
    assert "unexpected KeyError: 'surprise'" in out and "--debug" in out
    with pytest.raises(KeyError):
        cli.main(["eval", "somewhere", "--debug"])

    def bad_scene(self):  # messages are printed as text: brackets in paths are not rich markup
        raise SceneError("[/etc/passwd] frames[1] [bold]x")

    monkeypatch.setattr(cli.Eval, "run", bad_scene)
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "somewhere"])
    assert e.value.code == 2 and "error: [/etc/passwd] frames[1] [bold]x" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--max-steps", "-3"], "--max-steps -3: must be a whole number, at least 1"),
    (["--max-steps", "0"], "--max-steps 0: must be a whole number, at least 1"),
    (["--max-time", "0"], "--max-time 0.0: must be a number above 0"),
    (["--max-time", "nan"], "--max-time nan: must be a number above 0"),
    (["--lr", "-0.01"], "--lr -0.01: must be a number above 0"),
    (["--target-samples", "0"], "--target-samples 0: must be a whole number, at least 1"),
    (["--init-rays", "0"], "--init-rays 0: must be a whole number"),
    (["--max-rays", "-1"], "--max-rays -1: must be a whole number"),
    (["--grid-every", "0"], "--grid-every 0: must be a whole number"),
    (["--ckpt-every", "0"], "--ckpt-every 0: must be a whole number"),
    (["--log-every", "-5"], "--log-every -5: must be a whole number"),
    (["--ssim-weight", "1.5"], "--ssim-weight 1.5: must be a number between 0 and 1"),
    (["--grid-resolution", "0"], "--grid-resolution 0: must be a whole number"),
    (["--downscale", "0"], "--downscale 0: must be a whole number, at least 1"),
    (["--background", "1", "2", "1"], "--background (1.0, 2.0, 1.0): must be three numbers between 0 and 1"),
])
def test_budgets_and_sizes_that_make_no_sense_are_refused_before_a_run_folder(args, message, tmp_path, capsys):
    from fields.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--output-dir", str(tmp_path / "outputs"), "--quiet", *args])
    out = capsys.readouterr().out
    assert e.value.code == 2 and out.startswith("error: ") and message in " ".join(out.split()), out
    assert len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "outputs").exists()


def test_a_config_file_with_a_senseless_budget_names_the_file_and_key(tmp_path):
    from fields.run.config import ConfigError, RunConfig

    path = tmp_path / "config.yaml"
    RunConfig().save(path)
    path.write_text(path.read_text().replace("max_steps: null", "max_steps: -3"))
    with pytest.raises(ConfigError, match=r"config.yaml: train.max_steps is -3; it must be a whole number, at least 1"):
        RunConfig.load(path)
    path.write_text(path.read_text().replace("max_steps: -3", "max_steps: ten"))
    with pytest.raises(ConfigError, match=r"train.max_steps is 'ten'"):
        RunConfig.load(path)
