"""Exposure: exports requested from the viewer stay inside the run folder (the guard the export buttons use)."""

from __future__ import annotations

import pytest

from fields.export import ExportError, run_output_path


def test_export_paths_from_the_viewer_stay_inside_the_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    assert run_output_path(run, "mesh.ply") == (run / "exports" / "mesh.ply").resolve()
    assert run_output_path(run, "videos/orbit.mp4") == (run / "exports" / "videos" / "orbit.mp4").resolve()
    assert (run / "exports" / "videos").is_dir()
    assert run_output_path(run, str(run / "eval" / "x.ply")) == (run / "eval" / "x.ply").resolve()
    (run / "exports" / "out").symlink_to(outside)
    for bad in ["../../etc/passwd", "../../outside/x.ply", str(outside / "x.ply"), "/etc/cron.d/x", "out/x.ply",
                "..", "", "  ", "a\0b", str(run), "videos"]:
        with pytest.raises(ExportError):
            run_output_path(run, bad)
    assert list(outside.iterdir()) == []
