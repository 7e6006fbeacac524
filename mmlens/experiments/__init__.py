"""The study's pipeline: train -> trace -> stats -> ablations -> report; the demo."""
