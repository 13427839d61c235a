"""Configs: defaults, YAML, --set and flag precedence, one-line validation errors, the saved copy reloads."""

from __future__ import annotations

import pytest

from kdmobile.config import AMMKDConfig, load_config, save_config
from kdmobile.errors import KDError


def test_precedence_defaults_yaml_set_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\ntrain:\n  epochs: 4\n  lr: 0.01\ndata:\n  spec: digits\n")
    cfg = load_config(AMMKDConfig, f, {"train.epochs": 7, "seed": None}, ["train.lr=0.5", "fusion=none"])
    assert cfg.seed == 3 and cfg.train.epochs == 7 and cfg.train.lr == 0.5 and cfg.fusion == "none"
    assert cfg.teacher_train.epochs == AMMKDConfig().teacher_train.epochs


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(AMMKDConfig, None, {"teachers": ["kd-vit-tiny"], "train.batch_size": 8})
    save_config(tmp_path / "config.yaml", cfg)
    assert load_config(AMMKDConfig, tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("sets, needle", [
    (["train.epochs=-2"], "train.epochs"),
    (["fusion=half"], "fusion"),
    (["unknown=1"], "unknown"),
    (["templates=['no placeholder']"], "templates"),
    (["train.device=tpu"], "device"),
    (["train"], "KEY=VALUE"),
])
def test_invalid_values_are_one_line_errors(sets, needle):
    with pytest.raises(KDError) as err:
        load_config(AMMKDConfig, None, None, sets)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(KDError, match="no such config file"):
        load_config(AMMKDConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(KDError, match="not valid YAML"):
        load_config(AMMKDConfig, bad)
    bad.write_text("- a list\n")
    with pytest.raises(KDError, match="mapping"):
        load_config(AMMKDConfig, bad)


def test_overriding_one_key_keeps_the_method_defaults_of_its_section():
    """--teacher-epochs / --set teacher_train.epochs=N must not reset the teacher's lr, warm-up or smoothing to
    TrainConfig's class defaults (it did: the CIFAR teachers once trained at lr 2e-3 instead of 5e-4)."""
    from kdmobile.config import AMMKDConfig, SDKDConfig, load_config

    default = AMMKDConfig().teacher_train
    cfg = load_config(AMMKDConfig, None, {"teacher_train.epochs": 3}, ["teacher_train.batch_size=16"])
    assert (cfg.teacher_train.epochs, cfg.teacher_train.batch_size) == (3, 16)
    assert cfg.teacher_train.lr == default.lr and cfg.teacher_train.label_smoothing == default.label_smoothing
    assert cfg.teacher_train.warmup_epochs == default.warmup_epochs
    assert load_config(AMMKDConfig, None, None, ["loss.terms.fd=1"]).loss.terms == {"ce": 1.0, "kl": 10.0, "fd": 1.0,
                                                                                    "icl": 0.0}
    sd = load_config(SDKDConfig, None, {"teacher_train.epochs": 1})
    assert sd.teacher_train.lr == SDKDConfig().teacher_train.lr and sd.health.margin == 0.1


def test_teacher_epochs_scale_per_teacher():
    """The built-in ViT trains 1.5x the teacher epochs (it needs a longer schedule than the ResNet); --teacher-epochs
    scales with it, 0 stays 0, and a scale that is not positive is refused in one line."""
    cfg = AMMKDConfig()
    assert (cfg.teacher_epochs("kd-vit-s"), cfg.teacher_epochs("kd-rn-s")) == (30, 20)
    cfg = load_config(AMMKDConfig, None, {"teacher_train.epochs": 4}, ["teacher_epoch_scale.kd-rn-s=0.5"])
    assert (cfg.teacher_epochs("kd-vit-s"), cfg.teacher_epochs("kd-rn-s"), cfg.teacher_epochs("RN50")) == (6, 2, 4)
    assert load_config(AMMKDConfig, None, {"teacher_train.epochs": 0}).teacher_epochs("kd-vit-s") == 0
    with pytest.raises(KDError, match="teacher epoch scales must be > 0"):
        load_config(AMMKDConfig, None, None, ["teacher_epoch_scale.kd-vit-s=0"])
