"""ALS backends: one module per backend with the same functions (see common.py)."""
