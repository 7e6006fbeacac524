"""The statistics of MATH.md as pure functions of stored Datasets. No torch."""
