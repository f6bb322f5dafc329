"""Surface quality of an exported mesh against a reference surface: Chamfer distance and F-score.

Both compare point samples: ``precision`` is the fraction of mesh samples within ``tau`` of the reference,
``recall`` the fraction of reference points within ``tau`` of the mesh samples, F-score their harmonic mean
(Knapitsch et al., Tanks and Temples). The Chamfer distance is the mean of the two directed mean
nearest-neighbour distances.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree


def sample_surface(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points spread uniformly by area over the mesh's faces."""
    points, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(points)


def chamfer_fscore(pred: np.ndarray, ref: np.ndarray, tau: float) -> dict[str, float]:
    """Chamfer distance, precision, recall and F-score at ``tau`` between point sets [N, 3] and [M, 3]."""
    d_pred = cKDTree(ref).query(pred, workers=-1)[0]  # mesh -> reference (accuracy)
    d_ref = cKDTree(pred).query(ref, workers=-1)[0]  # reference -> mesh (completeness)
    precision, recall = float((d_pred < tau).mean()), float((d_ref < tau).mean())
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"chamfer": 0.5 * float(d_pred.mean() + d_ref.mean()), "precision": precision, "recall": recall,
            "fscore": fscore, "tau": tau}
