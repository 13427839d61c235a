"""Torch-free runtime: load a bundle, run it with onnxruntime / LiteRT / CoreML, predict and measure."""

from kdmobile.bundle import Bundle, load_bundle
from kdmobile.runtime.backends import Backend, available_backends, open_backend
from kdmobile.runtime.measure import host_info, latency_stats, measure_peak_rss, time_callable
from kdmobile.runtime.predictors import ForecastPredictor, RetrievalPredictor, load_image

__all__ = [
    "Backend", "Bundle", "ForecastPredictor", "RetrievalPredictor", "available_backends", "host_info",
    "latency_stats", "load_bundle", "load_image", "measure_peak_rss", "open_backend", "time_callable",
]
