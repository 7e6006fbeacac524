"""The trace store: xarray schema, validation, zarr/netCDF IO and the ``ds.mml`` accessor. No torch."""

from __future__ import annotations

from mmlens.store import accessor as _accessor  # noqa: F401  (registers .mml on Dataset/DataArray/DataTree)
from mmlens.store.integrity import StoreIntegrityError, StoreStatus, store_status, verify
from mmlens.store.lock import StoreLockedError
from mmlens.store.schema import SchemaError, provenance_attrs, validate

__all__ = [
    "SchemaError",
    "StoreIntegrityError",
    "StoreLockedError",
    "StoreStatus",
    "provenance_attrs",
    "store_status",
    "validate",
    "verify",
]
