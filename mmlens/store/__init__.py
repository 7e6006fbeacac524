"""The trace store: xarray schema, validation, zarr/netCDF IO and the ``ds.mml`` accessor. No torch."""
