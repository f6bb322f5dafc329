"""Field backends by name: the only place that knows every backend."""

from __future__ import annotations

from fields.base import FieldConfig
from fields.cam import CAMConfig
from fields.gaussians import GaussiansConfig
from fields.hashgrid import HashGridConfig
from fields.mlp import MLPConfig
from fields.rbf import RBFConfig

FIELD_CONFIGS: dict[str, type[FieldConfig]] = {
    "hashgrid": HashGridConfig,
    "mlp": MLPConfig,
    "rbf": RBFConfig,
    "cam": CAMConfig,
    "gaussians": GaussiansConfig,
}
