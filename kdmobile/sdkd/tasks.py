"""SDKD's task outside training (kdmobile.tasks.Task): a forecast head that maps T_in normalised frames to T_out.
The model works on (x - mean) / std; runtime predictors take and give physical units, so export records the
normalisation and verification and bench convert at the boundary."""

from __future__ import annotations

from typing import Any

import numpy as np

from kdmobile.bundle import Bundle
from kdmobile.contracts.heldout import HeldOut
from kdmobile.contracts.student import StudentCard
from kdmobile.evaluation import Infer, backend_infer, evaluate_forecast
from kdmobile.export.verify import Reference, student_infer, verification_index
from kdmobile.tasks import Score, Task


def _predictor_infer(predictor: Any, mean: float, std: float) -> Infer:
    """A runtime forecast predictor (physical units) as an evaluator model on normalised windows."""
    return lambda x: (predictor.predict(x * std + mean) - mean) / std


class ForecastTask(Task):
    """Frame windows in, frame windows out; the headline is the MSE (normalised units in manifests, physical in
    bench tables)."""

    io_names = ("frames", "forecast")

    def export_inputs(self, exp: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x_all = exp.run.need("x_test")
        index = verification_index(len(x_all))
        x = x_all[index].astype(np.float32)
        card = exp.run.card
        return index, x, (x * card.frame_std + card.frame_mean).astype(np.float32)

    def calibration(self, exp: Any, n: int) -> np.ndarray:
        return exp.run.need("x_calib")[:n].astype(np.float32)

    def reference(self, exp: Any) -> Reference:
        """Inputs/targets are normalised windows; the runtime gets raw units."""
        card = exp.run.card
        mean, std = card.frame_mean, card.frame_std
        y = exp.run.need("y_test")[exp.verify_index].astype(np.float32)
        x = exp.model_inputs
        out, metric = evaluate_forecast(student_infer(exp.run.model), x, y, mean, std)
        ref = Reference(self.name, (x * std + mean).astype(np.float32), x, out, targets=y, mean=mean, std=std)
        ref.metric, ref.headline = metric, self.row.headline
        return ref

    def manifest_sections(self, exp: Any, shape: list[int]) -> dict[str, Any]:
        run = exp.run
        mean, std = run.card.frame_mean, run.card.frame_std
        calib = run.heldout().x_calib if run.heldout().x_calib is not None else exp.model_inputs
        raw = calib * std + mean
        lo, hi = float(raw.min()), float(raw.max())
        t_out = int(run.card.frames_out or exp.reference.outputs.shape[1])
        return {"input": {"name": self.io_names[0], "shape": shape, "dtype": "float32", "layout": "NTHW",
                          "value_range": [lo, hi if hi > lo else lo + 1.0], "mean": [mean], "std": [std],
                          "value_range_note": "observed on the calibration windows, physical units"},
                "outputs": [{"name": self.io_names[1], "shape": [1, t_out, *shape[2:]]}],
                "forecast": {"frames_in": int(shape[1]), "frames_out": t_out, "mean": mean, "std": std,
                             "height": int(shape[2]), "width": int(shape[3]),
                             "units": "the model maps (x - mean) / std to (y - mean) / std; predictors take raw "
                                      "units"}}

    def run_bundle(self, bundle: Bundle, ref: Reference) -> tuple[np.ndarray, dict[str, float], float | None]:
        from kdmobile.runtime import ForecastPredictor

        infer = _predictor_infer(ForecastPredictor(bundle), ref.mean, ref.std)
        return evaluate_forecast(infer, ref.model_inputs, ref.targets, ref.mean, ref.std) + (None,)

    def bench_inputs(self, bundle: Bundle, heldout: HeldOut) -> np.ndarray | None:
        if heldout.x_test is None:
            return None
        fc = bundle.manifest["forecast"]
        return heldout.x_test.astype(np.float32) * fc["std"] + fc["mean"]

    def score_bundle(self, bundle: Bundle, predictor: Any, heldout: HeldOut) -> Score:
        """Physical-unit MSE (the runtime predictor takes and gives physical units)."""
        fc = bundle.manifest["forecast"]
        mean, std = float(fc["mean"]), float(fc["std"])
        _, m = evaluate_forecast(_predictor_infer(predictor, mean, std), heldout.x_test.astype(np.float32),
                                 heldout.y_test.astype(np.float32), mean, std)
        return "mse", m["mse_phys"], f"measured on held-out (N={len(heldout.x_test)})"

    def torch_inputs(self, heldout: HeldOut, card: StudentCard | None) -> np.ndarray:
        return heldout.x_test.astype(np.float32)

    def score_torch(self, model: Any, run: Any, card: StudentCard | None, device: str) -> Score:
        from kdmobile.runtime.backends import TorchBackend

        h, norm = run.heldout(), run.normalisation()
        _, m = evaluate_forecast(backend_infer(TorchBackend(model, device=device)), h.x_test.astype(np.float32),
                                 h.y_test.astype(np.float32), norm["mean"], norm["std"])
        return "mse", m["mse_phys"], f"measured on held-out (N={len(h.y_test)})"
