"""Training: one loop (loop.py) and the methods built on it (ammkd.py, sdkd.py)."""
