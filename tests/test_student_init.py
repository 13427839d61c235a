"""Pretrained starts: --student-init FILE reproduces a saved student, backbone files from timm load by name and
shape, files that do not fit (or would unpickle code) are refused in one line, and an open_clip teacher from a local
weights file used as it is gives open_clip's own zero-shot top-1."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from kdmobile.cli import main
from kdmobile.errors import KDError
from kdmobile.models import create_model
from kdmobile.models.student_init import apply_init, resolve_init
from tests.conftest import TINY_AMMKD

BACKBONE = "mobilenetv3_small_050"


def _student() -> torch.nn.Module:
    return create_model("ammkd_student", backbone=BACKBONE, embed_dim=16, teacher_dims=[32, 32], image_size=32)


def _without(args: list[str], flag: str) -> list[str]:
    i = args.index(flag)
    return args[:i] + args[i + 2:]


def test_student_file_reproduces_run_a(tmp_path: Path) -> None:
    """Run B, started from run A's student with A's teachers and 0 epochs, scores A's test top-1."""
    out = str(tmp_path / "runs")
    assert main(["train", "ammkd", *TINY_AMMKD, "--out", out, "--name", "a"]) == 0
    run_a = tmp_path / "runs" / "a"
    args_b = _without(_without(TINY_AMMKD, "--teachers"), "--epochs")
    assert main(["train", "ammkd", *args_b, "--out", out, "--name", "b", "--teachers-from", str(run_a),
                 "--student-init", str(run_a / "student.safetensors"), "--epochs", "0"]) == 0
    a = json.loads((run_a / "metrics.json").read_text())["models"]["student"]["top1"]
    metrics_b = json.loads((tmp_path / "runs" / "b" / "metrics.json").read_text())
    assert abs(metrics_b["models"]["student"]["top1"] - a) <= 0.1
    assert metrics_b["student_init"].endswith("student.safetensors")
    log = [json.loads(line) for line in (tmp_path / "runs" / "b" / "log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "init" and "every weight" in r["student_init"] for r in log)


def test_timm_backbone_safetensors_loads_by_name_and_shape(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = timm.create_model(BACKBONE)  # a classifier checkpoint, as timm publishes it
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    student = _student()
    said = apply_init(student, resolve_init(str(tmp_path / "model.safetensors"), BACKBONE))
    own = student.backbone.state_dict()
    assert said.startswith(f"{len(own)}/{len(own)} backbone tensors")
    assert torch.equal(own["conv_stem.weight"], source.state_dict()["conv_stem.weight"])


def test_weights_only_checkpoint_with_prefix(tmp_path: Path) -> None:
    source = timm.create_model(BACKBONE)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3},
               tmp_path / "ckpt.pth")
    student = _student()
    apply_init(student, resolve_init(str(tmp_path / "ckpt.pth"), BACKBONE))
    assert torch.equal(student.backbone.state_dict()["conv_stem.weight"], source.state_dict()["conv_stem.weight"])


class _Payload:
    def __reduce__(self):  # what a crafted checkpoint would run on load
        return (print, ("owned",))


@pytest.mark.parametrize("case", ["pickle", "other-arch", "missing", "suffix"])
def test_bad_init_files_are_one_line_errors(tmp_path: Path, case: str) -> None:
    path = tmp_path / "w.pth"
    if case == "pickle":
        path.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    elif case == "other-arch":
        torch.save(timm.create_model("resnet18").state_dict(), path)
    elif case == "suffix":
        path = tmp_path / "w.txt"
        path.write_text("x")
    if case == "missing":
        path = tmp_path / "nope.pth"
    with pytest.raises(KDError) as err:
        apply_init(_student(), resolve_init(str(path), BACKBONE))
    assert "\n" not in str(err.value) and "--student-init" in str(err.value)


def test_pretrained_offline_is_one_line(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # this machine has no network; say so up front
    monkeypatch.setenv("HF_HOME", "/nonexistent-kdmobile-cache")
    with pytest.raises(KDError, match="cannot get timm's weights for mobilenetv3_small_050"):
        resolve_init("pretrained", BACKBONE)


def test_bad_student_init_flag_writes_nothing(tmp_path: Path, capsys) -> None:
    code = main(["train", "ammkd", *TINY_AMMKD, "--out", str(tmp_path / "runs"), "--student-init", "imagenet"])
    assert code == 2 and "--student-init imagenet" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_open_clip_teacher_from_local_file_zero_shot(tmp_path: Path) -> None:
    """`NAME:FILE` with --teacher-epochs 0: the run's teacher top-1 equals open_clip's, computed here directly."""
    import open_clip

    from kdmobile.models.clip_teacher import _open_clip, builtin_config

    _open_clip()  # registers the built-in configs with open_clip
    torch.manual_seed(0)
    model = open_clip.CLIP(**{k: v for k, v in builtin_config("kd-rn-tiny", None).items()
                              if k != "kdmobile_conv_stem"})
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    out = str(tmp_path / "runs")
    args = _without(TINY_AMMKD, "--teachers")
    assert main(["train", "ammkd", *args, "--out", out, "--name", "z", "--teachers",
                 f"kd-rn-tiny:{tmp_path / 'clip.pt'}", "--teacher-epochs", "0", "--epochs", "0",
                 "--weighting", "none"]) == 0
    run = tmp_path / "runs" / "z"
    reported = json.loads((run / "metrics.json").read_text())["models"]["teacher:kd-rn-tiny"]["top1"]
    # open_clip directly, on the run's held-out test images, with the run's prompts
    model.eval()
    with np.load(run / "heldout.npz") as z:
        images, labels = z["images_test"], z["labels_test"]
    classes = json.loads((run / "labels.json").read_text())
    tok = open_clip.get_tokenizer("kd-rn-tiny")
    templates = ["a photo of a {}.", "a picture of a {}.", "an image of the {}.", "a low resolution photo of the {}."]
    with torch.no_grad():
        text = F.normalize(model.encode_text(tok([t.format(c) for c in classes for t in templates])), dim=-1)
        vectors = F.normalize(text.view(len(classes), len(templates), -1).mean(1), dim=-1)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        x = F.interpolate((x - mean) / std, size=(size, size), mode="bilinear", align_corners=False)
        pred = (F.normalize(model.encode_image(x), dim=-1) @ vectors.T).argmax(1).numpy()
    assert abs(reported - 100.0 * float((pred == labels).mean())) <= 1e-6
