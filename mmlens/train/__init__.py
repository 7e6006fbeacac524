"""Few-shot prompt learning and bias tuning; base/novel evaluation with route ablations."""
