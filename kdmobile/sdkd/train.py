"""SDKD (arXiv 2507.02939): spectral decoupled distillation for spatiotemporal forecasting.

Trains a conv+Transformer teacher (or several), a student without KD (the baseline) and the SDKD student, whose
loss is ground-truth MSE + output distillation + frequency-band latent distillation through a 1x1 adapter. The
teachers' KD terms are combined by the same `TeacherWeighting` AMMKD uses; every stage runs on `Trainer`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdmobile.config import SDKDConfig, save_config
from kdmobile.contracts.heldout import HeldOut, write_heldout
from kdmobile.data.sequences import SequenceSpec, check_frames, load_sequences, make_windows
from kdmobile.errors import UserError
from kdmobile.fileio import atomic_path, cache_dir, write_json
from kdmobile.metrics import forecast_errors, per_step_mse, per_step_rel_l2, ssim
from kdmobile.models import create_model, save_model
from kdmobile.models.forecasters import latent_channels
from kdmobile.models.profile import count_flops, count_params
from kdmobile.sdkd.labels import init_tensors, labelled_windows, pseudo_labels
from kdmobile.rundir import (CONFIG_FILE, LOG_FILE, NORMALISATION_FILE, WEIGHTS_SUFFIX, check_resume,
                             new_run_dir, stage_dir, teacher_file, write_method, write_metrics)
from kdmobile.table import format_table
from kdmobile.train import distributed as dist
from kdmobile.train.loop import RunLog, StepOutput, Trainer, iterate_batches, seed_everything
from kdmobile.train.losses import output_distill, spectral_band_loss
from kdmobile.train.health import TeacherHealth, announce, check_teachers, health_record
from kdmobile.train.weighting import TeacherWeighting

def cached_navier_stokes_path(cfg: SDKDConfig) -> Path:
    """Where the generated default Navier-Stokes set for these settings is cached (named by a digest of its key)."""
    from kdmobile.data.navier_stokes import cached_dataset_path

    d = cfg.data
    return cached_dataset_path(cache_dir(), n=d.n, res=d.res, visc=d.visc, t_final=d.t_final, seed=cfg.data_seed,
                               solve_res=d.solve_res, scheme=d.scheme)


def cached_navier_stokes(cfg: SDKDConfig, progress: bool = True) -> Path:
    """Generate (once, resumably) the small default Navier-Stokes set for these settings; later runs reuse the file.

    The file name carries a digest of every generation parameter, so changing any of them makes a new file."""
    from kdmobile.data.navier_stokes import cached_dataset

    d = cfg.data
    return cached_dataset(cache_dir(), n=d.n, res=d.res, visc=d.visc, t_final=d.t_final, seed=cfg.data_seed,
                          progress=progress, solve_res=d.solve_res, scheme=d.scheme)


class Distiller(nn.Module):
    """The trainable part of SDKD: the student plus one adapter per teacher (student latent -> teacher's): a 1x1
    conv (FitNets' regressor), or `3x3` (conv 3x3, GELU, conv 1x1) for more room between the two latents."""

    def __init__(self, student: nn.Module, teacher_channels: list[int], adapter: str = "1x1") -> None:
        super().__init__()
        self.student = student
        c = latent_channels(student)

        def make(ct: int) -> nn.Module:
            if adapter == "1x1":
                return nn.Conv2d(c, ct, 1)
            return nn.Sequential(nn.Conv2d(c, ct, 3, padding=1), nn.GELU(), nn.Conv2d(ct, ct, 1))

        self.adapters = nn.ModuleList(make(ct) for ct in teacher_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        out, z = self.student.forward_with_latent(x)
        return out, z, [a(z) for a in self.adapters]


class SDKD:
    """One SDKD run: data, teacher(s), baseline student, SDKD student, evaluation, all under `self.run`."""

    def __init__(self, cfg: SDKDConfig, resume: bool = False, progress: bool = True) -> None:
        self.cfg, self.resume, self.progress = cfg, resume, progress
        count = len(cfg.teacher_files) or cfg.teachers
        self.teacher_names = ["teacher"] if count == 1 else [f"teacher{i + 1}" for i in range(count)]
        for f in cfg.teacher_files:
            if not Path(f).expanduser().is_file():
                raise UserError(f"teacher file {f}: no such file")
        self.weighting = TeacherWeighting(cfg.weighting, self.teacher_names, cfg.tolerance)
        d = cfg.data
        self.source = Path(d.path).expanduser() if d.path else cached_navier_stokes(cfg, progress)
        spec = SequenceSpec(frames_in=d.frames_in, frames_out=d.frames_out, val_frac=d.val_frac,
                            test_frac=d.test_frac, seed=cfg.data_seed, stride=d.stride)
        array = load_sequences(self.source)
        check_frames(array, spec, self.source)
        self.splits = make_windows(array, spec)
        self.n_labelled = labelled_windows(self.splits.train_traj, len(self.splits.train_x), d.label_fraction)
        self.init = (init_tensors(cfg.student_init, create_model(cfg.student, **self._kwargs(), **cfg.student_kwargs),
                                  {k: v for k, v in self._extra().items() if k in ("frames_in", "frames_out",
                                                                                   "height", "width")})
                     if cfg.student_init else None)  # a wrong file fails here, not after the teachers' training
        self.run = dist.agree(lambda: new_run_dir(cfg.out, cfg.name, resume), dist.pick_device(cfg.train.device))
        if resume:  # before anything is written: a finished run, or other settings, are refused
            check_resume(self.run, cfg.model_dump(mode="json"))
        self.log: RunLog | None = None
        self.device = dist.pick_device(cfg.train.device)

    # ------------------------------------------------------------------ driver
    def run_all(self) -> dict[str, Any]:
        """Teacher(s) -> no-KD student -> SDKD student -> metrics, figure, held-out data for export."""
        seed_everything(self.cfg.seed)
        s = self.splits
        self.run = dist.claim_run(self.run, self.cfg.name, self.resume, self.device)
        if dist.is_main():
            write_method(self.run, "sdkd")
            save_config(self.run / CONFIG_FILE, self.cfg)
            write_json(self.run / NORMALISATION_FILE, {"mean": float(s.mean), "std": float(s.std),
                                                         "frames_in": self.cfg.data.frames_in,
                                                         "frames_out": self.cfg.data.frames_out,
                                                         "source": str(self.source)})
            write_heldout(self.run, HeldOut(x_test=s.test_x, y_test=s.test_y, x_calib=s.train_x[:256]))
        dist.barrier()
        self.log = RunLog(self.run / LOG_FILE)
        teachers = {}
        for i, name in enumerate(self.teacher_names):
            teachers[name] = self.train_teacher(name, seed=self.cfg.seed + 10 * i)
        models: dict[str, nn.Module] = dict(teachers)
        health: list[TeacherHealth] = []
        if self.cfg.baseline and self.cfg.kd != "none":
            models["student_nokd"] = self.train_student("student_nokd", "none", teachers)
            health = self.check_health(teachers, models["student_nokd"])
        dropped = [h.teacher for h in health if not h.healthy] if self.cfg.health.drop_weak else []
        models["student"] = self.train_student("student", self.cfg.kd, teachers,
                                               active=[n for n in teachers if n not in dropped])
        metrics = self.evaluate_all(models) if dist.is_main() else {}
        if dist.is_main():
            metrics["teacher_health"] = health_record(health, dropped)
            write_metrics(self.run, metrics)
            self.figure(models)
        return metrics

    def _dataset(self, targets: np.ndarray | None = None) -> TensorDataset:
        """The labelled training windows; with `targets` (the pseudo-labels of the rest) every training window."""
        s, n = self.splits, self.n_labelled
        if targets is None or n == len(s.train_x):
            return TensorDataset(torch.from_numpy(s.train_x[:n]), torch.from_numpy(s.train_y[:n]))
        return TensorDataset(torch.from_numpy(s.train_x), torch.from_numpy(np.concatenate([s.train_y[:n], targets])))

    def _kwargs(self) -> dict[str, int]:
        return {"frames_in": self.cfg.data.frames_in, "frames_out": self.cfg.data.frames_out}

    def _extra(self) -> dict[str, Any]:
        s = self.splits
        return {"task": "forecast", **self._kwargs(), "height": int(s.train_x.shape[-2]),
                "width": int(s.train_x.shape[-1]), "mean": float(s.mean), "std": float(s.std)}

    def _eval_mse(self, model: nn.Module) -> dict[str, float]:
        pred = self.predict(model, self.splits.val_x)
        return {"mse": float(np.mean((pred - self.splits.val_y) ** 2))}

    def teacher_arch(self, name: str) -> str:
        """The architecture of teacher `name` (teacher_models cycled over the teachers)."""
        models = self.cfg.teacher_models
        return models[self.teacher_names.index(name) % len(models)]

    def check_health(self, teachers: dict[str, nn.Module], baseline: nn.Module) -> list[TeacherHealth]:
        """Each teacher's validation MSE against the no-KD student's: a teacher must be clearly better to teach."""
        values = {n: self._eval_mse(t)["mse"] for n, t in teachers.items()}
        checks = check_teachers(values, self._eval_mse(baseline)["mse"], "val mse", False, self.cfg.health.margin)
        announce(checks, self.log, self.progress, dist.is_main())
        return checks

    # ------------------------------------------------------------------ stages
    def train_teacher(self, name: str, seed: int) -> nn.Module:
        """Fit one forecaster teacher on ground truth (MSE); cached in teachers/NAME.safetensors."""
        from kdmobile.models import load_model

        path = teacher_file(self.run, name)
        if self.cfg.teacher_files:
            source = Path(self.cfg.teacher_files[self.teacher_names.index(name)]).expanduser()
            if dist.is_main() and not path.is_file():  # kept in this run too: bench and --teachers-from find it
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    shutil.copyfile(source, tmp)
            return load_model(source)[0].to(self.device)
        if self.resume and path.is_file():
            return load_model(path)[0].to(self.device)
        seed_everything(seed)
        arch = self.teacher_arch(name)
        model = create_model(arch, **self._kwargs(), **(self.cfg.teacher if arch == "sdkd_teacher" else self.cfg.simvp))
        trainer = Trainer(f"teacher/{name}", model, self.cfg.teacher_train, stage_dir(self.run, name),
                          self.log, seed, self.progress)

        def step(m: nn.Module, batch: Any) -> StepOutput:
            x, y = batch
            return StepOutput(torch.mean((m(x).float() - y) ** 2))

        model = trainer.fit(self._dataset(), step, self._eval_mse, resume=self.resume)
        if dist.is_main():
            save_model(path, model, extra=self._extra())
        return model

    def train_student(self, stage: str, kd: str, teachers: dict[str, nn.Module],
                      active: list[str] | None = None) -> nn.Module:
        """Fit a student with ground truth plus the KD terms `kd` selects, from the `active` teachers (all by
        default; those failing the health check are left out); saved as STAGE.safetensors."""
        from kdmobile.models import load_model

        path = self.run / f"{stage}{WEIGHTS_SUFFIX}"
        if self.resume and path.is_file():
            return load_model(path)[0].to(self.device)
        seed_everything(self.cfg.seed + 2)
        cfg = self.cfg
        student = create_model(cfg.student, **self._kwargs(), **cfg.student_kwargs)
        if self.init is not None:  # phase 2: continue the phase-1 student
            student.load_state_dict(self.init)
        names = list(teachers)
        distiller = Distiller(student, [latent_channels(teachers[n].cpu()) for n in names], cfg.adapter)
        trainer = Trainer(stage, distiller, cfg.train, stage_dir(self.run, stage), self.log, cfg.seed, self.progress)
        for t in teachers.values():
            t.to(trainer.device).eval().requires_grad_(False)
        low_w = 0.0 if kd == "spectral-high" else cfg.spectral_alpha
        high_w = 0.0 if kd == "spectral-low" else 1.0
        active = list(names if active is None else active)
        if not active:
            kd = "none"
        weighting = self.weighting if kd != "none" else TeacherWeighting("none", names)
        targets = None
        if kd != "none" and cfg.pseudo_labels and self.n_labelled < len(self.splits.train_x):
            targets = pseudo_labels(self.predict, [teachers[n] for n in active], self.splits.train_x[self.n_labelled:])
            self.log.write(stage=stage, event="pseudo_labels", windows=len(targets), teachers=active)

        def step(m: nn.Module, batch: Any) -> StepOutput:
            x, y = batch
            out, z, adapted = m(x)
            gt = torch.mean((out.float() - y) ** 2)
            loss = cfg.gt_weight * gt
            stats: dict[str, float] = {"gt": gt.item()}
            if kd != "none":
                terms = {}
                with torch.no_grad():
                    t_out = {n: teachers[n].forward_with_latent(x) for n in active}
                for i, n in enumerate(names):
                    if n not in active:
                        continue
                    if kd == "output":
                        term = cfg.output_weight * output_distill(out, t_out[n][0])
                    else:
                        spec, bands = spectral_band_loss(adapted[i], t_out[n][1], cfg.cutoffs, low_w, high_w,
                                                         cfg.spectral_normalise)
                        term = cfg.spectral_weight * spec
                        if cfg.spectral_output_weight:
                            term = term + cfg.spectral_output_weight * output_distill(out, t_out[n][0])
                        stats.update({f"{n}_{k}": float(v) for k, v in bands.items()})
                    terms[n] = term
                kd_loss, weights = weighting.combine(terms, wrt=[out, z], active=active)
                loss = loss + kd_loss
                stats["kd"] = kd_loss.item()
                stats.update({f"w_{n}": w for n, w in weights.items()})
            return StepOutput(loss, stats)

        distiller = trainer.fit(self._dataset(targets), step, lambda m: self._eval_mse(m.student), resume=self.resume)
        if dist.is_main():
            save_model(path, distiller.student, extra={**self._extra(), "kd": kd})
        return distiller.student

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, model: nn.Module, x: np.ndarray, batch: int = 32) -> np.ndarray:
        """Normalised forecasts for normalised inputs, in batches, on the model's device."""
        device = next(model.parameters()).device
        model.eval()
        return np.concatenate([model(torch.from_numpy(x[s]).to(device)).float().cpu().numpy()
                               for s in iterate_batches(len(x), batch)])

    def evaluate_model(self, name: str, model: nn.Module) -> dict[str, Any]:
        """One model on the test windows, in physical units: MSE/MAE/relative L2/SSIM, per-step MSE and relative
        L2, parameters, FLOPs and torch CPU latency."""
        s = self.splits
        target = s.test_y * s.std + s.mean
        probe = torch.from_numpy(s.test_x[:1]).float()
        model = model.cpu().eval()
        pred = self.predict(model, s.test_x) * s.std + s.mean
        return {"role": "teacher" if name.startswith("teacher") else "student",
                **forecast_errors(pred, target), "ssim": ssim(pred, target),
                "per_step_mse": per_step_mse(pred, target),
                "per_step_rel_l2": per_step_rel_l2(pred, target), "params": count_params(model),
                "flops": count_flops(model, probe), "cpu_latency_ms": _latency_ms(model, probe)}

    def evaluate_all(self, models: dict[str, nn.Module]) -> dict[str, Any]:
        """Every model's `evaluate_model`, and the SDKD student's reductions against the no-KD student."""
        s = self.splits
        out = {name: self.evaluate_model(name, model) for name, model in models.items()}
        base = out.get("student_nokd")
        summary = {}
        if base:
            for k in ("mse", "mae"):
                summary[f"{k}_reduction_vs_nokd_pct"] = 100.0 * (1 - out["student"][k] / base[k])
        teacher = out[self.teacher_names[0]]
        summary["student_params_vs_teacher"] = out["student"]["params"] / teacher["params"]
        return {"method": "sdkd", "task": "forecast", "kd": self.cfg.kd, "data": str(self.source),
                "split_windows": {"train": len(s.train_x), "val": len(s.val_x), "test": len(s.test_x)},
                "labelled_train_windows": self.n_labelled, "student_init": self.cfg.student_init,
                "frames_in": self.cfg.data.frames_in, "frames_out": self.cfg.data.frames_out,
                **summary, "models": out}

    def figure(self, models: dict[str, nn.Module], sample: int = 0) -> Path:
        """forecast.png in the run: ground truth and each model's forecast for one test sample."""
        return forecast_figure(self.run / "forecast.png", self.splits,
                               {n: self.predict(m, self.splits.test_x[sample : sample + 1])[0]
                                for n, m in models.items()}, sample)


def forecast_figure(path: Path, splits: Any, forecasts: dict[str, np.ndarray], sample: int = 0) -> Path:
    """A PNG of ground truth and each forecast (normalised (T_out, H, W) for test window `sample`) at a few
    horizons, in physical units on one colour scale. Used by the run and by the benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = splits
    steps = sorted({0, s.test_y.shape[1] // 2, s.test_y.shape[1] - 1})
    rows = {"ground truth": s.test_y[sample], **forecasts}
    fig, axes = plt.subplots(len(rows), len(steps), figsize=(2.2 * len(steps), 2.2 * len(rows)), squeeze=False)
    lo, hi = float(rows["ground truth"].min()), float(rows["ground truth"].max())
    for r, (label, frames) in enumerate(rows.items()):
        for c, t in enumerate(steps):
            ax = axes[r][c]
            ax.imshow(frames[t] * s.std + s.mean, cmap="RdBu_r", vmin=lo * s.std + s.mean, vmax=hi * s.std + s.mean)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t+{t + 1}")
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _latency_ms(model: nn.Module, probe: torch.Tensor, runs: int = 20) -> float:
    """Median batch-1 latency of torch eager on one CPU thread (the bench measures exported files)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            model(probe)
            samples = []
            for _ in range(runs):
                t0 = time.perf_counter()
                model(probe)
                samples.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(samples))


def metrics_table(metrics: dict[str, Any]) -> str:
    """The table `kdmobile train sdkd` prints."""
    weak = set(metrics.get("teacher_health", {}).get("weak", []))
    rows = [[n + (" (WEAK)" if n in weak else ""), m["mse"], m["mae"], m["rel_l2"], m["ssim"], m["params"],
             m["flops"] / 1e6, m["cpu_latency_ms"]] for n, m in metrics["models"].items()]
    return format_table(["model", "MSE", "MAE", "rel L2", "SSIM", "params", "MFLOPs", "CPU ms (torch, 1 thr)"], rows)


def run_sdkd(cfg: SDKDConfig, resume: bool = False, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Entry point used by the CLI and the benchmarks: returns (run directory, metrics)."""
    job = SDKD(cfg, resume=resume, progress=progress)
    return job.run, job.run_all()
