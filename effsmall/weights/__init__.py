"""Trained weights that ship with the package (``python -m effsmall.models.book`` writes them)."""
