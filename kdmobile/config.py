"""Typed configs for each method: defaults, YAML files and `--set key=value` overrides, validated with one-line errors.

The resolved config is written into the run directory, so `kdmobile train METHOD --config runs/X/config.yaml`
repeats a run exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, TypeVar, get_args

from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator,
                      model_validator)

from kdmobile.contracts.manifest import MAX_EMBED_DIM  # a bundle's class-vector width
from kdmobile.errors import UserError
from kdmobile.student_choice import AUTO, MAX_BUDGET_MS, MAX_CANDIDATES, ZOO_TOP1
from kdmobile.untrusted import MAX_CONFIG_BYTES, MAX_SET_CHARS, parse_yaml, read_yaml  # noqa: F401

M = TypeVar("M", bound=BaseModel)


# CLIP's prompt ensembling: each class name in these templates, averaged (teachers' class vectors, export --classes).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of the {}.",
    "a low resolution photo of the {}.",
)
KDMode = Literal["none", "output", "spectral", "spectral-low", "spectral-high"]  # SDKD's distillation variants
KD_MODES: tuple[str, ...] = get_args(KDMode)
# Chosen by the first student zoo (the most accurate Pareto model at >= 100x the ViT-B/32 tower at 224 px) and kept by
# zoo v2's rule (student_choice.DEFAULT_RULE: int8 >= 120x the tower and >= 1.3x its own fp32, top-1 >= 43.2), which
# no backbone met on this host: 0.834 ms int8 w8a32, 123x, 44.4 % (results/student_zoo.md, README "Headline").
DEFAULT_STUDENT = "mobilenetv3_small_050"
# kl 10 from `benchmarks/ammkd_ablation.py --search` on CIFAR-10 (2 seeds, confidence weighting): kl 1 gave +2.75
# points over no KD, kl 3/6/10 +4.5/+3.8/+4.9, pure KD (ce 0) +3.6; temperature 1/2/8 did worse than 4. Over 5 seeds
# the confidence student went from +2.20 (kl 1) to +4.16 (kl 10) (README "AMMKD on CIFAR-10").
DEFAULT_LOSS_TERMS: dict[str, float] = {"ce": 1.0, "kl": 10.0, "fd": 0.0, "icl": 0.0}


# Limits of settings that size an allocation or a loop (one careless value must not take the machine): far above any
# real use; the message names the limit.
MAX_EPOCHS = 100_000
MAX_TRAIN_BATCH = 65_536
MAX_IMAGE_SIZE = 4096

MAX_GRID = 4096              # Navier-Stokes grid (training and `kdmobile data navier-stokes`)
MAX_FRAMES = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainConfig(_Strict):
    """Settings of the shared training loop (one per stage)."""

    epochs: int = Field(10, ge=0, le=MAX_EPOCHS)
    batch_size: int = Field(64, ge=1, le=MAX_TRAIN_BATCH)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(0.5, ge=0, le=MAX_EPOCHS)
    grad_clip: float = Field(5.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # on the class/contrastive cross-entropy of the step
    ema: float = Field(0.0, ge=0, lt=1)  # decay of an EMA of the weights (0 = off); the EMA copy is the result
    # Return the weights of the epoch with the lowest validation value (its first metric: SDKD's val MSE) instead of
    # the last epoch's: early stopping without stopping, so small labelled sets are not judged overfitted.
    keep_best: bool = False
    device: str = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    # DataLoader worker processes; None: one per core up to 8 for photo folders (decoding is the work), 0 for the
    # in-memory sets (digits, CIFAR .npz: a worker would only copy what is already in RAM).
    workers: int | None = Field(None, ge=0, le=64)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError("must be auto, cpu or cuda[:N]")
        return v


class ImageDataConfig(_Strict):
    """Which image dataset to use and how to split it."""

    spec: str = "digits"
    image_size: int | None = Field(None, ge=8, le=MAX_IMAGE_SIZE)  # None: from the data (32 for digits/CIFAR, up to 96 for photos)
    val_frac: float = Field(0.1, ge=0, lt=1)
    test_frac: float = Field(0.2, gt=0, lt=1)
    max_train: int | None = Field(None, ge=1)
    max_test: int | None = Field(None, ge=1)
    # Per-sample augmentation of the students (auto: strong for photos, crop where flips change the meaning) and
    # of the teachers' pre-training (auto: strong for photos, affine for digit-like data). Teachers from scratch
    # need the stronger one (ViT on digits: 96.4 -> 96.9 % test with affine), the 12-epoch student does not (affine
    # cost its no-KD test top-1 1.7 points: 95.0 vs 96.7 %). During distillation both models see the student's view.
    augment: Literal["auto", "none", "crop", "crop-flip", "affine", "strong"] = "auto"
    teacher_augment: Literal["auto", "none", "crop", "crop-flip", "affine", "strong"] = "auto"
    split_seed: int | None = None  # seed of the train/val/test split; None = the run's seed. Fix it to compare seeds.
    # Offline distillation (AMMKD students): 0 = a fresh augmented view every step, teachers run every step; V > 0 =
    # V views per training image, each kept as the seed that regenerates it plus every teacher's float16 embedding of
    # it (seeds from `view_seed`), reused by every epoch (view (epoch + seed) mod V). Distillation then costs about
    # what training alone costs. The cache is a directory of 10,000-image shards at `view_cache` (default:
    # RUN/views/); runs with the same data, augmentation and teachers can share it.
    views: int = Field(0, ge=0, le=1000)
    view_seed: int = 0
    view_cache: str | None = None


class LossConfig(_Strict):
    """Named loss terms and their weights: ce (labels), kl (AMMKD), fd and icl (CLIP-KD feature terms). The terms given
    replace their defaults and the others keep theirs, built directly or through load_config (kl=0 drops KD)."""

    terms: dict[str, float] = dict(DEFAULT_LOSS_TERMS)

    @field_validator("terms")
    @classmethod
    def _terms(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - {"ce", "kl", "fd", "icl"})
        if unknown:
            raise ValueError(f"unknown loss terms {unknown}; known: ce, kl, fd, icl")
        if any(w < 0 for w in v.values()):
            raise ValueError("loss term weights must be >= 0")
        return {**DEFAULT_LOSS_TERMS, **v}  # as load_config merges --loss / --set: unlisted terms keep their default


class HealthConfig(_Strict):
    """Teacher health check: each teacher must make `margin` (a fraction) fewer errors than the no-KD student."""

    margin: float = Field(0.1, ge=0, lt=1)
    drop_weak: bool = True  # leave weak teachers out of the distillation (they are still reported)


class AMMKDConfig(_Strict):
    """AMMKD: CLIP teachers pre-trained on the data, then a mobile student distilled from both."""

    name: str = "ammkd"
    out: str = "runs"
    seed: int = 0
    data: ImageDataConfig = ImageDataConfig()
    teachers: list[str] = ["kd-vit-s", "kd-rn-s"]
    # Measured on digits (test top-1, 359 images): the ViT reached 93.3 % in 20 epochs, 96.4 % in 30, 96.9 % in 30
    # with the affine augmentation and 98.05 % in 30 with affine + label smoothing 0.1; lr 1e-3 left it at chance.
    # lr 5e-4, batch 32, EMA of the weights.
    teacher_train: TrainConfig = TrainConfig(epochs=20, lr=5e-4, batch_size=32, ema=0.998, label_smoothing=0.1)
    # A ViT from scratch needs a longer schedule than a ResNet (no convolutional prior): teacher NAME trains
    # round(teacher_train.epochs x scale) epochs. The ResNet passes 99 % val on digits within 5 epochs.
    teacher_epoch_scale: dict[str, float] = {"kd-vit-s": 1.5}
    # A teacher that starts from weights (an open_clip tag or file, or a kdmobile teacher file) is fine-tuned at this
    # learning rate instead of teacher_train.lr (5e-4 is for training from scratch; CLIP fine-tuning recipes such as
    # WiSE-FT use 1e-5 to 3e-5, higher rates wreck the pretrained features).
    teacher_finetune_lr: float = Field(1e-5, gt=0)
    templates: list[str] = list(DEFAULT_TEMPLATES)
    student: str = DEFAULT_STUDENT  # a timm backbone, or "auto" (below)
    # `--student auto`: the most accurate of student_candidates (by the zoo's recorded accuracy,
    # kdmobile.student_choice.ZOO_TOP1) whose student runs within latency_budget_ms on this host, timed as export
    # ships it to student_runtime (int8 as export builds it there when student_int8, else fp32; 1 thread).
    latency_budget_ms: Optional[float] = Field(None, gt=0, le=MAX_BUDGET_MS)
    student_candidates: list[str] = Field(default_factory=lambda: list(ZOO_TOP1), min_length=1,
                                          max_length=MAX_CANDIDATES)
    student_int8: bool = False
    student_runtime: Literal["onnx", "tflite", "executorch"] = "onnx"  # the runtime `--student auto` times in
    # `--int8-for arm64`: instead of timing here, check the budget against published ARM64 int8 figures
    # (kdmobile.student_choice.ARM64_INT8_MS, at 224 px; not measured by kdmobile).
    student_int8_for: Optional[Literal["arm64"]] = None
    # Where the student's weights start: random, pretrained (timm's ImageNet weights; needs a network or timm's cache)
    # or a file: a kdmobile student.safetensors, a timm .safetensors or a weights-only .pth checkpoint.
    student_init: str = "random"
    embed_dim: int = Field(128, ge=8, le=MAX_EMBED_DIM)
    fusion: Literal["full", "none"] = "full"
    temperature: float = Field(4.0, gt=0)
    loss: LossConfig = LossConfig()
    # CA-MKD confidence weights: best mean and smallest spread of the weightings on digits (3 seeds, demo teachers:
    # 94.61 +- 0.43 vs AE-KD 94.34 +- 1.13, no KD 92.94); AE-KD handed the weaker teacher its maximum weight there.
    weighting: str = "confidence"
    tolerance: float = Field(0.6, gt=0, le=1)
    train: TrainConfig = TrainConfig(epochs=12)
    baseline: bool = True  # also train the student without KD: the health check and the "KD helps" figure need it
    health: HealthConfig = HealthConfig()

    def teacher_epochs(self, name: str) -> int:
        """Epochs of teacher `name`: teacher_train.epochs scaled by teacher_epoch_scale (0 stays 0)."""
        return round(self.teacher_train.epochs * self.teacher_epoch_scale.get(name, 1.0))

    @field_validator("teacher_epoch_scale")
    @classmethod
    def _scales(cls, v: dict[str, float]) -> dict[str, float]:
        if any(not s > 0 for s in v.values()):
            raise ValueError("teacher epoch scales must be > 0")
        return v

    @field_validator("teachers")
    @classmethod
    def _teachers(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one teacher is needed")
        return v

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        if not v or any("{}" not in t for t in v):
            raise ValueError("every prompt template needs a '{}' for the class name")
        return v

    @field_validator("student_candidates")
    @classmethod
    def _candidates(cls, v: list[str]) -> list[str]:
        unknown = [b for b in v if b not in ZOO_TOP1]
        if unknown:
            raise ValueError(f"no recorded accuracy for {', '.join(unknown)[:200]} (candidates: {', '.join(ZOO_TOP1)})")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _auto(self) -> "AMMKDConfig":
        """A latency budget belongs to `--student auto`, and `--student auto` needs one."""
        if self.student == AUTO and self.latency_budget_ms is None:
            raise ValueError("--student auto needs --latency-budget-ms (the p50 a student may take on this host)")
        if self.student != AUTO and self.latency_budget_ms is not None:
            raise ValueError("--latency-budget-ms applies to --student auto only")
        if self.student != AUTO and (self.student_runtime != "onnx" or self.student_int8_for):
            raise ValueError("--runtime and --int8-for apply to --student auto only")
        if self.student_int8_for and self.student_runtime != "onnx":
            raise ValueError("--int8-for reads published figures for another device, --runtime times here: "
                             "give one of them")
        return self


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = value


def validation_message(err: ValidationError, what: str = "config", flags: Mapping[str, str] | None = None) -> str:
    """The one way a pydantic ValidationError of any settings model becomes a one-line message: the first problem,
    named by its flag when `flags` maps the field to one (else `what` and the dotted field), and the count of the
    rest. With `flags`, a validator's own ValueError is already a whole sentence naming the flag and is kept."""
    first = err.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if flags is not None and first["type"] == "value_error" and isinstance(cause, ValueError):
        return str(cause)  # a validator that words its message by flag (bench's checks)
    loc = ".".join(str(p) for p in first["loc"])
    flag = (flags or {}).get(loc) or ((flags or {}).get(str(first["loc"][0])) if first["loc"] else None)
    where = flag or (f"{what} {loc}" if loc else what)
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first['msg'].removeprefix('Value error, ')}{more}"


def load_config(cls: type[M], path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> M:
    """Defaults <- YAML file <- `--set a.b=v` strings <- explicit flag overrides (None values are ignored)."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"{p}: no such config file")
        loaded = read_yaml(p)
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"{p}: a config file must be a YAML mapping")
        tree = loaded or {}
    for item in sets or []:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise UserError(f"--set {item}: expected KEY=VALUE")
        if len(raw) > MAX_SET_CHARS:
            raise UserError(f"--set {key.strip()}: value of {len(raw)} characters, over the {MAX_SET_CHARS} limit")
        _set_dotted(tree, key.strip(), parse_yaml(raw, f"--set {key.strip()}"))
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
    try:
        # Overrides go onto the method's own defaults: validating `{"teacher_train": {"epochs": 2}}` alone would
        # rebuild that section from TrainConfig's class defaults and silently drop the method's teacher lr etc.
        return cls.model_validate(_merge(cls().model_dump(), tree))
    except ValidationError as err:
        raise UserError(validation_message(err)) from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid onto `base`, section by section (mappings merge, every other value replaces)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def save_config(path: str | os.PathLike, cfg: BaseModel) -> None:
    """Write the resolved config as YAML (atomically), so the run can be repeated; never with aliases, which
    `load_config` refuses (a value object shared by two settings would otherwise be written as `&id001` / `*id001`)."""
    import yaml

    from kdmobile.fileio import atomic_path

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.dump(cfg.model_dump(mode="json"), Dumper=NoAliases, sort_keys=False))


class SequenceDataConfig(_Strict):
    """Navier-Stokes data: a file (.npy/.npz/.mat) or, when `path` is empty, a generated cached set."""

    path: str | None = None
    n: int = Field(200, ge=2)  # 40 left the teacher worse than the no-KD student (nothing to distil)
    res: int = Field(32, ge=8, le=MAX_GRID)
    # The grid the generator solves on (None: res); a multiple of res, stored by keeping every k-th point (FNO
    # solved at 256² and stored 64²: a turbulent flow at ν = 1e-5 needs the finer solve).
    solve_res: Optional[int] = Field(None, ge=8, le=MAX_GRID)
    # The solver's time scheme: FNO's forward Euler (default, the published sets) or SSP-RK3, which needs no ν/U²
    # step limit and so solves ν = 1e-5 about 40x faster (kdmobile.data.ns_solver).
    scheme: Literal["euler", "rk3"] = "euler"
    visc: PositiveFloat = 1e-3
    t_final: PositiveFloat = 30.0
    frames_in: int = Field(10, ge=1, le=MAX_FRAMES)
    frames_out: int = Field(10, ge=1, le=MAX_FRAMES)
    stride: PositiveInt = 2
    val_frac: float = Field(0.1, ge=0, lt=1)
    test_frac: float = Field(0.2, gt=0, lt=1)
    # Seed of the generated trajectories and of the train/val/test split (None: the run's seed). A benchmark fixes
    # it so that students of several seeds share one split, and the teacher trained on it.
    seed: int | None = None
    # Label-scarce training: the windows of the first fraction of the training trajectories keep their futures; the
    # rest are inputs only (teachers and the no-KD student see the labelled part; a KD student gets the teachers'
    # mean forecast as the target of the rest when `pseudo_labels`).
    label_fraction: float = Field(1.0, gt=0, le=1)


class SDKDConfig(_Strict):
    """SDKD: a conv+Transformer teacher, then lightweight students with spectral latent distillation."""

    name: str = "sdkd"
    out: str = "runs"
    seed: int = 0
    data: SequenceDataConfig = SequenceDataConfig()
    teachers: int = Field(1, ge=1, le=4)
    teacher_files: list[str] = []  # reuse trained teachers (teachers/NAME.safetensors of an earlier run)
    # Teacher i is built as teacher_models[i % len]: the conv + Transformer teacher (kwargs `teacher`) and/or the
    # SimVP v2-style all-conv teacher (kwargs `simvp`).
    teacher_models: list[Literal["sdkd_teacher", "sdkd_simvp"]] = Field(["sdkd_teacher"], min_length=1)
    teacher: dict[str, Any] = {"width": 64, "conv_blocks": 3, "transformer_blocks": 3, "heads": 4}
    simvp: dict[str, Any] = {"width": 64, "blocks": 4}
    teacher_train: TrainConfig = TrainConfig(epochs=20, lr=2e-3, batch_size=16, weight_decay=0.01)
    student: Literal["sdkd_resnet", "sdkd_unet"] = "sdkd_resnet"
    student_kwargs: dict[str, Any] = {"width": 16}  # a quarter of the teachers' width (64)
    kd: KDMode = "spectral"
    cutoffs: list[float] = [0.25, 0.5]
    gt_weight: float = Field(1.0, ge=0)
    output_weight: float = Field(1.0, ge=0)  # kd=output: weight of the output distillation term
    # kd=spectral*: the paper's loss, task MSE + lambda (high + alpha low) with each band relative to the teacher's
    # power (spectral_normalise). lambda = 1 (the raw paper value) made the student worse; see README (SDKD).
    spectral_weight: float = Field(0.01, ge=0)  # lambda
    spectral_output_weight: float = Field(0.0, ge=0)  # output distillation added to the spectral loss (option)
    spectral_alpha: float = Field(1.0, ge=0)  # alpha: weight of the low band relative to the high band
    spectral_normalise: bool = True  # each band's error relative to the teacher's power in it (losses.py)
    adapter: Literal["1x1", "3x3"] = "1x1"  # student latent -> each teacher's latent (sdkd.Distiller)
    weighting: str = "adaptive"
    tolerance: float = Field(0.6, gt=0, le=1)
    train: TrainConfig = TrainConfig(epochs=20, lr=2e-3, batch_size=16, weight_decay=0.01)
    baseline: bool = True
    health: HealthConfig = HealthConfig()  # a teacher's val MSE must be <= 0.9 x the no-KD student's
    # Two-phase distillation: start the student(s) from this kdmobile student file (RUN/student.safetensors of a
    # no-KD run) instead of random weights; the same architecture and grid are required.
    student_init: Optional[str] = None
    pseudo_labels: bool = True  # with data.label_fraction < 1 and KD: teachers label the unlabelled windows

    @field_validator("cutoffs")
    @classmethod
    def _cutoffs(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < c < 1 for c in v):
            raise ValueError("cut-offs must be in (0, 1)")
        return sorted(v)

    @property
    def data_seed(self) -> int:
        """The seed of the data and its split: data.seed, else the run's seed."""
        return self.seed if self.data.seed is None else self.data.seed
