"""SDKD (arXiv 2507.02939): a spatiotemporal forecaster distilled with spectral (frequency-band) terms. Everything
that depends on its task (forecast) lives in this package; kdmobile.methods names it."""
