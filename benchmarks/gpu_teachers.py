"""Teachers (and students) in PyTorch on a CUDA GPU: the "GPU teacher" baseline a phone student is compared with.

Times the per-image towers (CLIP image encoders for AMMKD; the forecaster for SDKD) at batch 1 and 64, fp32 and
bf16 autocast, with CUDA events after warm-up. Records the card. Writes benchmarks/results/gpu_teachers.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from kdmobile.models import create_model
from kdmobile.models.clip_teacher import ClipTeacher, parse_teacher
from kdmobile.models.profile import count_params

RESULTS = Path(__file__).parent / "results"


def _nontrivial_bn(model: torch.nn.Module) -> None:
    """Random BatchNorm statistics, so nothing is folded away and timings are honest (DESIGN.md)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)


@torch.no_grad()
def time_cuda(fn, x: torch.Tensor, amp: bool, warmup: int = 20, runs: int = 100) -> dict[str, float]:
    """Median and p90 milliseconds per call, measured with CUDA events."""
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cuda", enabled=False)
    with ctx:
        for _ in range(warmup):
            fn(x)
        torch.cuda.synchronize()
        samples = []
        for _ in range(runs):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(x)
            b.record()
            torch.cuda.synchronize()
            samples.append(a.elapsed_time(b))
    return {"p50_ms": float(np.median(samples)), "p90_ms": float(np.percentile(samples, 90))}


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_teachers: no CUDA GPU here", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    models = {}
    for spec in ["kd-vit-s", "kd-rn-s", "ViT-B-32", "RN50"]:
        t = ClipTeacher(parse_teacher(spec), load_pretrained=False).eval().to(dev)
        _nontrivial_bn(t)
        models[f"teacher:{spec}"] = (t.image_tower(), t.image_size, 3, count_params(t))
    student = create_model("ammkd_student").eval().to(dev)
    _nontrivial_bn(student)
    models["ammkd student"] = (student, 32, 3, count_params(student))
    for name in ["sdkd_teacher", "sdkd_resnet"]:
        m = create_model(name).eval().to(dev)
        models[name] = (m, 64, 10, count_params(m))
    rows = []
    for name, (module, size, chans, params) in models.items():
        for batch in (1, 64):
            x = torch.randn(batch, chans, size, size, device=dev)
            for amp in (False, True):
                r = time_cuda(module, x, amp)
                rows.append({"model": name, "input": f"{chans}x{size}x{size}", "batch": batch,
                             "precision": "bf16" if amp else "fp32", "params": params, **r})
                print(f"{name:20s} b{batch:<3d} {'bf16' if amp else 'fp32'}  {r['p50_ms']:.3f} ms", flush=True)
    out = {"benchmark": "gpu_teachers", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu_teachers.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
