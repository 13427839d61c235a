"""Can the int8 path itself be made faster? Variants of onnxruntime static int8 for the zoo's small backbones at 224 px.

Issue 23 asks for a default student whose int8 bundle is >= 1.3x its own fp32 and >= 120x the ViT-B/32 image tower.
Before giving up on a backbone this times, side by side in one process (onnxruntime, 1 thread, batch 1, interleaved
rounds), the levers the export path could pull:

  fp32            export's fp32 file, session at ORT_ENABLE_ALL (what bench runs)
  fp32-basic      the same file at ORT_ENABLE_BASIC (what the file itself carries)
  u8s8            static QDQ of every Conv: uint8 activations, int8 weights per channel (export before this study)
  u8s8-tensor     the same with per-tensor weights
  u8s8-qop        QOperator format (QLinearConv ops in the file) instead of QDQ
  u8s8-nostem     QDQ with the RGB stem convolution left fp32 (what export builds since: quantize.STEM_MAX_CHANNELS)
  u8s8-ext        export's u8s8 file at ORT_ENABLE_EXTENDED (no NCHWc / NHWC layout transformers)
  s8s8            int8 activations (VNNI's native signed form on some kernels)

with the ViT-B/32 tower (random weights) as the reference, and counts which operators the loaded session ran
(optimized_model_filepath at ORT_ENABLE_ALL, with the op domain: com.microsoft QLinearConv is the NHWC
kernel onnxruntime's layout transformer picks on x86).
Random weights with randomised BatchNorm statistics: latency does not depend on trained values.

    python benchmarks/int8_path.py [--backbones ...] [--size 224] [--rounds 10 --calls 15]

Writes benchmarks/results/int8_path.{json,md}. Run it on a quiet machine; the load average is recorded.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kdmobile.fileio import write_json
from kdmobile.table import format_table

RESULTS = Path(__file__).resolve().parent / "results"
BACKBONES = ["mobilenetv3_small_050", "mobilenetv4_conv_small_035", "mobilenetv4_conv_small_050",
             "tf_mobilenetv3_small_minimal_100"]
FAILED: dict[str, str] = {}  # "backbone|variant" -> why onnxruntime.quantization could not build it
LEVELS = {"all": "ORT_ENABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}


def session(path: Path, level: str = "all", dump: Path | None = None) -> Any:
    """One-thread CPU session at a graph optimisation level (optionally saving the optimised graph)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    opts.log_severity_level = 3
    if dump is not None:
        opts.optimized_model_filepath = str(dump)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build(backbone: str, size: int, work: Path) -> dict[str, tuple[Path, str]]:
    """Every variant's file (and session level) for one backbone."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from kdmobile.export.onnx import convert_onnx
    from kdmobile.export.quantize import _reader, quiet
    from kdmobile.models.profile import randomise_batchnorm
    from kdmobile.models.registry import create_model, fuse_for_inference

    torch.manual_seed(0)
    model = create_model("ammkd_student", backbone=backbone, image_size=size).eval()
    randomise_batchnorm(model)
    model = fuse_for_inference(model).eval()
    calib = np.random.default_rng(0).standard_normal((16, 3, size, size)).astype(np.float32)
    fp32 = work / "fp32.onnx"
    convert_onnx(model, torch.zeros(1, 3, size, size), fp32, "fp32", None, input_name="image",
                 output_name="embedding")
    pre = work / "pre.onnx"
    stem = next(n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv")
    out: dict[str, tuple[Path, str]] = {"fp32": (fp32, "all"), "fp32-basic": (fp32, "basic")}
    variants = {"u8s8": (QuantFormat.QDQ, QuantType.QUInt8, True, []),
                "u8s8-tensor": (QuantFormat.QDQ, QuantType.QUInt8, False, []),
                "u8s8-qop": (QuantFormat.QOperator, QuantType.QUInt8, True, []),
                "u8s8-nostem": (QuantFormat.QDQ, QuantType.QUInt8, True, [stem]),
                "s8s8": (QuantFormat.QDQ, QuantType.QInt8, True, [])}
    with quiet():
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        for name, (fmt, act, per_channel, exclude) in variants.items():
            dst = work / f"{name}.onnx"
            try:
                quantize_static(str(pre), str(dst), _reader("image", calib), quant_format=fmt, activation_type=act,
                                weight_type=QuantType.QInt8, per_channel=per_channel, nodes_to_exclude=exclude)
            except Exception as e:  # noqa: BLE001 - a variant the quantizer cannot build is reported, not fatal
                FAILED[f"{backbone}|{name}"] = f"{type(e).__name__}: {e}"
                print(f"  {name}: quantization failed ({FAILED[f'{backbone}|{name}']})", flush=True)
                continue
            out[name] = (dst, "all")
    out["u8s8-ext"] = (work / "u8s8.onnx", "extended")
    return out


def loaded_ops(path: Path, work: Path) -> dict[str, int]:
    """Operator counts of the graph onnxruntime actually runs at ORT_ENABLE_ALL."""
    import onnx

    dump = work / f"{path.stem}.loaded.onnx"
    session(path, "all", dump)
    nodes = onnx.load(str(dump)).graph.node
    return dict(collections.Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in nodes)
                .most_common(8))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=BACKBONES)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--calls", type=int, default=15)
    args = p.parse_args()
    import onnxruntime as ort

    from kdmobile.bench.reference import reference_file
    from kdmobile.export.int8_choice import time_side_by_side
    from kdmobile.runtime.measure import host_info

    with tempfile.TemporaryDirectory(prefix="int8-path-") as tmp:
        runners: dict[str, Any] = {}
        ops: dict[str, dict[str, int]] = {}
        vit, _ = reference_file("ViT-B-32", args.size)
        s = session(vit)
        runners["ViT-B-32|fp32"] = lambda x, s=s: s.run(None, {s.get_inputs()[0].name: x})[0]
        for b in args.backbones:
            work = Path(tmp) / b
            work.mkdir()
            print(f"{b}: building variants", flush=True)
            for name, (path, level) in build(b, args.size, work).items():
                s = session(path, level)
                runners[f"{b}|{name}"] = lambda x, s=s: s.run(None, {"image": x})[0]
                if name in ("fp32", "u8s8", "u8s8-qop"):
                    ops[f"{b}|{name}"] = loaded_ops(path, work)
        x = np.random.default_rng(1).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
        load = os.getloadavg()[0]
        print(f"timing {len(runners)} models interleaved ({args.rounds} x {args.calls}; load {load:.2f})", flush=True)
        p50 = time_side_by_side(runners, x, rounds=args.rounds, calls=args.calls)
    ref = p50["ViT-B-32|fp32"]
    rows, table = [], []
    for key, ms in p50.items():
        b, v = key.split("|")
        own = p50.get(f"{b}|fp32")
        rows.append({"backbone": b, "variant": v, "p50_ms": ms, "vs_vit_b32": ref / ms,
                     "vs_own_fp32": own / ms if own else None, "loaded_ops": ops.get(key)})
        table.append([b, v, f"{ms:.3f}", f"{ref / ms:.1f}x", f"{own / ms:.2f}x" if own else ""])
    host = host_info()
    out = {"benchmark": "int8_path", "size": args.size, "host": host, "onnxruntime": ort.__version__,
           "timing": f"1 thread, batch 1, {args.rounds} interleaved rounds x {args.calls} calls, p50",
           "load_average": [load, os.getloadavg()[0]], "rows": rows, "failed": FAILED}
    write_json(RESULTS / "int8_path.json", out)
    md = format_table(["backbone", "variant", "p50 ms", "vs ViT-B/32", "vs own fp32"], table, markdown=True)
    isa = ", ".join(k for k, v in (host.get("isa") or {}).items() if v)
    (RESULTS / "int8_path.md").write_text(
        f"# int8 path variants at {args.size} px\n\nHost: {host.get('cpu')} ({isa}); onnxruntime {ort.__version__}; "
        f"{out['timing']}; load average {load:.2f} / {out['load_average'][1]:.2f}. Random weights "
        f"(randomised BatchNorm statistics). `benchmarks/int8_path.py`.\n\n{md}\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
