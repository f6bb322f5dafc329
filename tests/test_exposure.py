"""Exposure: exports requested from the viewer stay inside the run folder (the guard the export buttons use)."""

from __future__ import annotations

import pytest

from fields.export import ExportError, inside_exports


def test_viewer_exports_cannot_leave_the_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert inside_exports(run, "mesh.ply") == run.resolve() / "exports" / "mesh.ply"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "exports" / "link.ply").symlink_to(elsewhere / "x.ply")
    (run / "exports" / "out").symlink_to(elsewhere, target_is_directory=True)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "exports").symlink_to(elsewhere, target_is_directory=True)
    bad = [(run, n) for n in ["../escape.ply", "../../etc/passwd", "/tmp/escape.ply", "/etc/cron.d/x",
                              "sub/../../escape.ply", "sub/x.ply", "out/x.ply", "link.ply", "..", "", "  ", "a\0b",
                              str(run), str(elsewhere / "x.ply")]]
    for run_dir, name in bad + [(linked, "mesh.ply")]:
        with pytest.raises(ExportError):
            inside_exports(run_dir, name)
    assert list(elsewhere.iterdir()) == []
