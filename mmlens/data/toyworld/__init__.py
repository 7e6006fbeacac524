"""toyworld: generated scenes with exact masks and controlled domain shifts."""
