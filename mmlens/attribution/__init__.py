"""captum adapters returning DataArrays on the trace's coordinates, and agreement metrics."""
