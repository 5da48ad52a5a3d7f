"""SGD backends (Funk SVD, SVD++, BPR): one module per backend with the same functions
(see common.py)."""
