"""kdmobile: distil small on-device models from large teachers, export them, and measure them."""

__version__ = "0.1.0"
