"""One artifact to convert (Job) and the built-in targets' converters (kdmobile.targets names them): each imports
its converter lazily, so a missing extra is a one-line error for that target only, and returns the manifest sections
it adds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdmobile.errors import UserError


@dataclass
class Job:
    """One artifact to convert: everything a converter may need."""

    model: Any
    example: Any
    out_path: Path
    precision: str
    calibration: np.ndarray | None
    int8_format: str
    int8_for: str | None         # a preset CPU for int8 (None: `auto` measures on this host)
    tflite_recipe: str
    input_name: str
    output_name: str
    metadata: dict[str, str]     # kdmobile.export.metadata.model_metadata: written into the model file itself
    cache: dict[str, Any] = field(default_factory=dict)  # shared by one export's jobs (TFLite: the float model)


def onnx_job(job: Job) -> dict[str, Any]:
    from kdmobile.export.onnx import convert_onnx

    return convert_onnx(job.model, job.example, job.out_path, job.precision, job.calibration, job.int8_format,
                        input_name=job.input_name, output_name=job.output_name, metadata=job.metadata,
                        int8_for=job.int8_for)


def tflite_job(job: Job) -> dict[str, Any]:
    try:
        from kdmobile.export.tflite import convert_tflite
    except ImportError as e:
        raise UserError(f"tflite export unavailable ({e}); pip install 'kdmobile[tflite]'") from None
    info = convert_tflite(job.model, job.example, job.out_path, job.precision, job.calibration,
                          recipe=job.tflite_recipe, metadata=job.metadata, cache=job.cache)
    return {"quantization": {"format": info.get("recipe", job.precision), **info}}


def coreml_job(job: Job) -> dict[str, Any]:
    try:
        from kdmobile.export.coreml import convert_coreml
        from kdmobile.export.conversion import mha_fastpath_off
    except ImportError as e:
        raise UserError(f"coreml export unavailable ({e}); pip install 'kdmobile[coreml]'") from None
    with mha_fastpath_off():  # restored afterwards: the switch is process-wide
        info = convert_coreml(job.model, job.example, job.out_path, job.precision, job.metadata,
                              input_name=job.input_name, output_name=job.output_name)
    weights = {"fp32": "none", "fp16": "fp16", "int8": "int8 weights"}[job.precision]
    return {"quantization": {"format": weights}, "coreml": info}


def executorch_job(job: Job) -> dict[str, Any]:
    try:
        from kdmobile.export.executorch import QUANT_SCHEME, convert_executorch
    except ImportError as e:
        raise UserError(f"executorch export unavailable ({e}); pip install 'kdmobile[executorch]'") from None
    info = convert_executorch(job.model, job.example, job.out_path, job.precision, job.calibration, job.metadata)
    fmt = {"format": "none"} if job.precision == "fp32" else {"format": "s8s8", "scheme": QUANT_SCHEME}
    return {"quantization": fmt, **info}
