"""The trace store: xarray schema, validation, selections (:mod:`mmlens.store.select`), zarr/netCDF IO. No torch."""

from __future__ import annotations

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
