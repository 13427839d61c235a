"""What the SDKD Navier-Stokes benchmark runs: its configurations, student rows (with the control each is compared
with), the teachers it trains and the search around the SDKD loss. `sdkd_navier_stokes.py` runs and reports them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resumable import Records

from kdmobile.rundir import STUDENT_FILE

TEACHERS = ["sdkd_teacher", "sdkd_simvp"]
VARIANTS = ["none", "output", "spectral", "spectral-low", "spectral-high"]
# The turbulent configs add two-phase distillation (the KD rows continue the seed's no-KD student for
# PHASE2 epochs, against `none-continued`: the same extra epochs without KD) and label-scarce rows (labels-F: the
# student on F % of the training trajectories alone, with as many optimiser steps as a full-data student;
# labels-F+teacher: a LABEL_TEACHER trained on those F % pseudo-labels the rest, the student trains on both with the
# spectral terms). CONTROL names the row each is compared with.
TURBULENT_VARIANTS = ["none", "none-continued", "output", "spectral", "spectral-low", "spectral-high", "labels-10",
                      "labels-10+teacher", "labels-10+two-teachers", "labels-25", "labels-25+teacher",
                      "labels-25+two-teachers"]
# labels-10+two-teachers: both architectures trained on the 10 %, their mean as pseudo-labels. Added after --search
# on seed 0, where it had the lowest validation (and test) MSE of the label-scarce settings; run over all seeds, then
# at 25 % too.
CONTROL = {**{v: "none-continued" for v in ("output", "spectral", "spectral-low", "spectral-high")},
           "labels-10+teacher": "labels-10", "labels-10+two-teachers": "labels-10", "labels-25+teacher": "labels-25",
           "labels-25+two-teachers": "labels-25"}
PHASE2 = {"cpu-turbulent": 20, "standard-turbulent": 30}
LABEL_TEACHER = "sdkd_simvp"
# --search: the settings tried around the default SDKD loss (one seed each, against that seed's no-KD student).
SEARCH: dict[str, dict[str, Any]] = {
    "lam1-raw": {"kd": "spectral", "spectral_weight": 1.0, "spectral_normalise": False},  # the paper's loss as is
    "lam0.1": {"kd": "spectral", "spectral_weight": 0.1},
    "lam0.003": {"kd": "spectral", "spectral_weight": 0.003},
    "alpha0.3": {"kd": "spectral", "spectral_alpha": 0.3},
    "alpha3": {"kd": "spectral", "spectral_alpha": 3.0},
    "cut0.1-0.3": {"kd": "spectral", "cutoffs": [0.1, 0.3]},
    "adapter3x3": {"kd": "spectral", "adapter": "3x3"},
    "spectral+output": {"kd": "spectral", "spectral_output_weight": 1.0},
    # which teacher (the turbulent configs' phase 2 adds these): each alone, and the plain average
    "only-sdkd_teacher": {"kd": "spectral", "weighting": "single:teacher1"},
    "only-sdkd_simvp": {"kd": "spectral", "weighting": "single:teacher2"},
    "equal-weights": {"kd": "spectral", "weighting": "equal"},
    "output3": {"kd": "output", "output_weight": 3.0},
    "output0.3": {"kd": "output", "output_weight": 0.3},
}
# Chosen on the cpu config (see the README's SDKD section for the search): students at 25 % of the teachers' width.
CONFIGS: dict[str, dict[str, Any]] = {
    "cpu": {"data.n": 400, "data.res": 32, "data.t_final": 30.0, "data.stride": 2, "data.val_frac": 0.1,
            "data.test_frac": 0.2, "teacher_train.epochs": 60, "train.epochs": 30,
            "teacher.width": 64, "simvp.width": 64, "student_kwargs.width": 16},
    "standard": {"data.n": 1200, "data.res": 64, "data.t_final": 50.0, "data.stride": 5, "data.val_frac": 0.05,
                 "data.test_frac": 1 / 6, "teacher_train.epochs": 100, "train.epochs": 60,
                 "teacher.width": 64, "simvp.width": 64, "student_kwargs.width": 16},
    # FNO's turbulent set (nu = 1e-5, T = 20, 10 -> 10: one window per trajectory), solved at 64^2 and stored 32^2.
    "cpu-turbulent": {"data.n": 800, "data.res": 32, "data.solve_res": 64, "data.scheme": "rk3", "data.visc": 1e-5,
                      "data.t_final": 20.0, "data.stride": 1, "data.val_frac": 0.1, "data.test_frac": 0.2,
                      "teacher_train.keep_best": True, "train.keep_best": True, "teacher_train.epochs": 80, "train.epochs": 60, "teacher.width": 64, "simvp.width": 64,
                      "student_kwargs.width": 16},
    # FNO's scale: 1,000 train / 200 test trajectories at 64^2 from a 256^2 solve (for a GPU).
    "standard-turbulent": {"data.n": 1200, "data.res": 64, "data.solve_res": 256, "data.scheme": "rk3", "data.visc": 1e-5,
                           "data.t_final": 20.0, "data.stride": 1, "data.val_frac": 0.05, "data.test_frac": 1 / 6,
                           "teacher_train.keep_best": True, "train.keep_best": True,
                           "teacher_train.epochs": 100, "train.epochs": 60, "teacher.width": 64, "simvp.width": 64,
                           "student_kwargs.width": 16},
}


# --search in the turbulent configs also tries the label-scarce student at 10 % (one seed, against labels-10):
# pseudo-labels alone (no KD term), output KD instead of the spectral terms, and both architectures' teachers.
LABEL_SEARCH: dict[str, tuple[dict[str, Any], list[str]]] = {
    "labels-10:pseudo-only": ({"kd": "output", "output_weight": 0.0, "weighting": "equal"}, [LABEL_TEACHER]),
    "labels-10:output-kd": ({"kd": "output"}, [LABEL_TEACHER]),
    "labels-10:two-teachers": ({"kd": "spectral"}, [LABEL_TEACHER, "sdkd_teacher"]),
}


def searches(config: str) -> list[str]:
    """The --search settings of a config."""
    return [*SEARCH, *(LABEL_SEARCH if config in PHASE2 else [])]


def search_setting(config: str, records: Records, name: str, seed: int) -> dict[str, Any]:
    """The overrides of search setting `name`: phase 2 of the seed's student, or a label-scarce student."""
    if name in LABEL_SEARCH:
        over, archs = LABEL_SEARCH[name]
        files = [records.get(f"teacher:{a}@labels-10")["file"] for a in archs]
        return {**over, "data.label_fraction": 0.1, "teacher_files": files}
    return {**SEARCH[name], **phase2(config, records, seed)}


def search_control(config: str, name: str) -> str:
    """The row a search setting is compared with (same seed)."""
    if name in LABEL_SEARCH:
        return "labels-10"
    return "none-continued" if config in PHASE2 else "none"


def scaled(epochs: int, percent: int) -> int:
    """Epochs on `percent` % of the windows with as many optimiser steps as `epochs` on all of them."""
    return int(round(epochs * 100 / percent))


def variants(config: str) -> list[str]:
    return TURBULENT_VARIANTS if config in PHASE2 else VARIANTS


def variant(config: str, records: Records, name: str, seed: int) -> dict[str, Any]:
    """The config overrides of student row `name` for this seed (turbulent configs: two-phase and label rows)."""
    if config not in PHASE2:
        return {"kd": name}
    if name == "none":
        return {"kd": "none"}
    if name.startswith("labels-"):
        percent = int(name.split("-")[1].split("+")[0])
        over: dict[str, Any] = {"data.label_fraction": percent / 100}
        if "+" in name:
            archs = [LABEL_TEACHER, "sdkd_teacher"] if name.endswith("+two-teachers") else [LABEL_TEACHER]
            files = [records.get(f"teacher:{a}@labels-{percent}")["file"] for a in archs]
            return {**over, "kd": "spectral", "teacher_files": files}
        return {**over, "kd": "none", "train.epochs": scaled(CONFIGS[config]["train.epochs"], percent)}
    return {"kd": "none" if name == "none-continued" else name, **phase2(config, records, seed)}


def phase2(config: str, records: Records, seed: int) -> dict[str, Any]:
    """Turbulent configs: continue the seed's no-KD student for PHASE2 epochs (else nothing: one phase)."""
    if config not in PHASE2:
        return {}
    phase1 = records.get(f"none/{seed}")
    return {"train.epochs": PHASE2[config], "student_init": str(Path(phase1["run"]) / STUDENT_FILE)}


def teacher_jobs(config: str, search: bool = False) -> list[str]:
    """The teachers this config trains: on all labels, then (turbulent) LABEL_TEACHER on each labelled part (and,
    for the search, every other teacher at 10 %)."""
    extra = [f"{LABEL_TEACHER}@labels-{v.split('-')[1]}" for v in variants(config)
             if v.startswith("labels-") and "+" not in v]
    extra += [f"sdkd_teacher@labels-{v.split('-')[1].split('+')[0]}" for v in variants(config)
              if v.endswith("+two-teachers")]
    if search and config in PHASE2:
        extra += [f"{a}@labels-10" for _, archs in LABEL_SEARCH.values() for a in archs
                  if f"{a}@labels-10" not in extra]
    return [*TEACHERS, *dict.fromkeys(extra)]
