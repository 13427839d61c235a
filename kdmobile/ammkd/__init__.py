"""AMMKD (arXiv 2509.00039): an image-text retrieval student distilled from two CLIP teachers. Everything that
depends on its tasks (classes, captions) lives in this package; kdmobile.methods names it."""
