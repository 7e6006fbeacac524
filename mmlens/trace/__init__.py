"""The instrumented forward: the exact per-block, per-head split of MATH.md, and interventions."""
