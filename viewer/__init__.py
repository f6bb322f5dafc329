"""Live web viewer built on viser: serves a run while it trains (``fields train --viewer``) or a saved run
(``fields view RUN``), rendering the field from each browser tab's camera."""

from viewer.app import Viewer
from viewer.render_worker import RenderTarget

__all__ = ["RenderTarget", "Viewer"]
