"""Field backends by name: the only place that knows every backend."""

from __future__ import annotations

from fields.base import FieldConfig
from fields.hashgrid import HashGridConfig

FIELD_CONFIGS: dict[str, type[FieldConfig]] = {
    "hashgrid": HashGridConfig,
}
