"""Field backends by name: the only place that knows every backend."""

from __future__ import annotations

from fields.backends.base import FieldConfig
from fields.backends.cam import CAMConfig
from fields.backends.gaussians import GaussiansConfig
from fields.backends.hashgrid import HashGridConfig
from fields.backends.mlp import MLPConfig
from fields.backends.rbf import RBFConfig

FIELD_CONFIGS: dict[str, type[FieldConfig]] = {
    "hashgrid": HashGridConfig,
    "mlp": MLPConfig,
    "rbf": RBFConfig,
    "cam": CAMConfig,
    "gaussians": GaussiansConfig,
}


def field_name(cfg: FieldConfig) -> str:
    """The registered name of the backend a config builds."""
    for name, cls in FIELD_CONFIGS.items():
        if type(cfg) is cls:
            return name
    raise ValueError(f"{type(cfg).__name__} is not a registered field backend (known: {', '.join(FIELD_CONFIGS)})")
