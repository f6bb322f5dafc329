"""``fields process images | video``: photos or a video in, a scene folder out, with the camera poses found by
structure-from-motion (pycolmap, in-process: SIFT, matching, incremental mapping).

``images`` copies (or downsizes) the input photos, ``video`` keeps the sharpest frame of each stretch of the
clip (``video.py``); ``sfm.py`` runs pycolmap on them and ``scene_folder.py`` writes what COLMAP and nerfstudio
users expect: ``images/``, ``sparse/0/``, ``transforms.json`` and ``sparse_pc.ply``. ``pipeline.py`` ties the
steps together; ``commands.py`` holds the command-line options. This is the application layer: it may use
``scenes`` and ``renderers``, and only ``fields/cli.py`` imports it.
"""

from __future__ import annotations


class ProcessError(ValueError):
    """Input that cannot be processed (empty folder, unreadable image or video, too few images registered); the
    message names the file or folder and the problem."""
