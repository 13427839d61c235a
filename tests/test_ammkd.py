"""AMMKD end to end: a tiny run, its run-directory contract, exact resume, DDP under torchrun, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdmobile.cli import main
from kdmobile.models import load_model
from kdmobile.train.loop import Trainer


def _run(args: list[str]) -> int:
    return main(args)


def test_tiny_run_writes_the_run_directory(tiny_ammkd_args, tmp_path, capsys):
    assert _run([*tiny_ammkd_args, "--name", "t"]) == 0
    out = capsys.readouterr().out
    assert "teacher:kd-vit-tiny" in out and "student" in out and "run directory" in out
    run = tmp_path / "runs" / "t"
    for name in ["config.yaml", "method.json", "labels.json", "class_vectors.npz", "student.safetensors",
                 "metrics.json", "heldout.npz", "log.jsonl", "teachers/kd-vit-tiny.safetensors",
                 "teachers/kd-rn-tiny.safetensors"]:
        assert (run / name).exists(), name
    assert not (run / "INCOMPLETE").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["models"]) == {"teacher:kd-vit-tiny", "teacher:kd-rn-tiny", "student_nokd", "student"}
    for m in metrics["models"].values():
        assert 0 <= m["top1"] <= 100 and m["top1"] <= m["top5"] and m["params"] > 0 and m["flops"] > 0
    student, extra = load_model(run / "student.safetensors")
    assert extra["teachers"] == ["kd-vit-tiny", "kd-rn-tiny"] and extra["labels"][0] == "zero"
    emb = student(torch.zeros(2, 3, 32, 32))
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    weights = [r for r in log if r.get("stage") == "student" and "w_kd-vit-tiny" in r]
    assert weights and all(abs(r["w_kd-vit-tiny"] + r["w_kd-rn-tiny"] - 1) < 1e-5 for r in weights)
    from kdmobile.models.clip_teacher import ClipTeacher, parse_teacher

    reused = ClipTeacher(parse_teacher(str(run / "teachers" / "kd-vit-tiny.safetensors")))  # reused as it is
    saved = _state(run / "teachers" / "kd-vit-tiny.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in reused.clip.state_dict().items())
    held = np.load(run / "heldout.npz")
    assert held["images_test"].shape[0] == metrics["split_sizes"]["test"] and held["images_test"].dtype == np.uint8


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tiny_ammkd_args, tmp_path, monkeypatch):
    assert _run([*tiny_ammkd_args, "--name", "full"]) == 0

    original_init = Trainer.__init__

    def interrupting_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if self.stage == "student":
            def stop(trainer: Trainer) -> None:
                if trainer.global_step == 4:  # second epoch, mid-way (3 steps per epoch)
                    raise KeyboardInterrupt
            self.callbacks.append(stop)

    monkeypatch.setattr(Trainer, "__init__", interrupting_init)
    assert _run([*tiny_ammkd_args, "--name", "cut"]) == 130
    run = tmp_path / "runs" / "cut"
    assert not (run / "student.safetensors").exists() and (run / "INCOMPLETE").exists()
    assert (run / "stages" / "student" / "last.pt").exists()
    monkeypatch.setattr(Trainer, "__init__", original_init)
    assert _run([*tiny_ammkd_args, "--name", "cut", "--resume"]) == 0
    full, resumed = _state(tmp_path / "runs" / "full" / "student.safetensors"), _state(run / "student.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.allclose(full[key].float(), resumed[key].float(), atol=1e-6), key
    log = (run / "log.jsonl").read_text()
    assert '"event": "resume"' in log


def test_missing_dataset_prints_one_line_exits_2_and_creates_nothing(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "kdmobile.cli", "train", "ammkd", "--data", "cifar10:/does/not/exist",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "/does/not/exist" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["--fusion", "bogus"], "--fusion"),
    (["--weighting", "single:nobody"], "nobody"),
    (["--set", "no_such_key=1"], "no_such_key"),
    (["--teachers", "not-a-model"], "not-a-model"),
    (["--epochs", "-1"], "epochs"),
    (["--resume", "--name", "never-ran"], "never-ran"),
])
def test_bad_flags_are_one_line_errors(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) if argv[0] == "--fusion" else _nullctx():
        code = _run(["train", "ammkd", "--out", str(tmp_path / "runs"), *argv])
        assert code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_local_teacher_weights_file_is_loaded(tmp_path):
    from kdmobile.models.clip_teacher import ClipTeacher, parse_teacher

    source = ClipTeacher(parse_teacher("kd-rn-tiny"))
    path = tmp_path / "rn.pt"
    torch.save(source.clip.state_dict(), path)
    loaded = ClipTeacher(parse_teacher(f"kd-rn-tiny:{path}"))
    for (k, a), b in zip(source.clip.state_dict().items(), loaded.clip.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(Exception, match="no such file"):
        parse_teacher(f"kd-rn-tiny:{tmp_path / 'missing.pt'}")
    assert parse_teacher("ViT-B-32:openai").pretrained == "openai"  # a network tag parses; it loads where online


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun gloo test written for Linux")
def test_two_process_gloo_ddp_run(tiny_ammkd_args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [a for a in tiny_ammkd_args]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29731", "-m", "kdmobile.cli", *args, "--name", "ddp", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["models"]["student"]["top1"] >= 0
    assert proc.stdout.count("run directory") == 1  # rank 0 alone prints and writes
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
              if '"stage": "student"' in line and '"event": "epoch"' in line]
    assert len(epochs) == 2  # one record per epoch, not one per rank


def test_caption_data_gives_recall_metrics(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 40
    images = rng.integers(0, 255, size=(n, 16, 16, 3), dtype=np.uint8)
    captions = [[f"a photo number {i}", f"picture {i} of something"] for i in range(n)]
    np.savez(tmp_path / "caps.npz", images=images, captions=np.asarray(json.dumps(captions)),
             filenames=np.asarray([f"{i}.jpg" for i in range(n)]))
    args = ["train", "ammkd", "--data", f"captions:{tmp_path / 'caps.npz'}", "--teachers", "kd-vit-tiny,kd-rn-tiny",
            "--teacher-epochs", "1", "--epochs", "1", "--no-progress", "--set", "embed_dim=16",
            "--set", "student=mobilenetv3_small_050", "--batch-size", "16", "--set", "teacher_train.batch_size=16",
            "--out", str(tmp_path / "runs"), "--name", "cap"]
    assert _run(args) == 0
    metrics = json.loads((tmp_path / "runs" / "cap" / "metrics.json").read_text())
    assert metrics["task"] == "captions"
    for m in metrics["models"].values():
        for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@10"):
            assert 0 <= m[key] <= 100
        assert m["i2t_R@1"] <= m["i2t_R@5"] <= m["i2t_R@10"]
    held = np.load(tmp_path / "runs" / "cap" / "heldout.npz")
    assert "textvec_test_kd-vit-tiny" in held and len(held["caption_owner_test"]) == 2 * len(held["images_test"])


def test_untrained_teachers_are_flagged_and_left_out_of_kd(tiny_ammkd_args, tmp_path, capsys):
    """Random (0-epoch) teachers: flagged WEAK, and the student distils from none. (A margin of 99 % fewer errors
    makes the verdict certain on a tiny run; the comparison itself has known-answer tests in test_teacher_trust.py.)"""
    args = list(tiny_ammkd_args)
    args[args.index("--teacher-epochs") + 1] = "0"
    assert _run([*args, "--name", "weak", "--epochs", "3", "--set", "health.margin=0.99", "--set", "health.drop_weak=true"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "weak"
    metrics = json.loads((run / "metrics.json").read_text())
    health = metrics["teacher_health"]
    assert set(health["weak"]) == {"kd-vit-tiny", "kd-rn-tiny"} == set(health["excluded_from_kd"])
    assert "WEAK" in out and "no teacher beats the student alone" in out
    assert "(WEAK)" in out  # the end-of-run table marks them too
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    student = [r for r in log if r.get("stage") == "student" and r.get("event") == "epoch"]
    assert student and all("kl" not in r for r in student)  # no KD term was computed
    assert (run / "student_nokd.safetensors").is_file() and "kd_gain_points" in metrics


def test_feature_terms_and_confidence_weighting_are_logged(tiny_ammkd_args, tmp_path):
    assert _run([*tiny_ammkd_args, "--name", "fd", "--weighting", "confidence", "--loss", "ce=1,kl=1,fd=1,icl=0.5",
                 "--set", "baseline=false"]) == 0
    run = tmp_path / "runs" / "fd"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r.get("stage") == "student" and r.get("event") == "epoch"]
    for r in epochs:
        for term in ("ce", "kl", "fd", "icl"):
            assert term in r and np.isfinite(r[term])
        for term in ("kl", "fd", "icl"):
            assert abs(r[f"w_{term}_kd-vit-tiny"] + r[f"w_{term}_kd-rn-tiny"] - 1) < 1e-5
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["loss_terms"] == {"ce": 1.0, "kl": 1.0, "fd": 1.0, "icl": 0.5}
    assert "student_nokd" not in metrics["models"]
    student, _ = load_model(run / "student.safetensors")  # the training-only projectors are not part of the student
    assert not any(k.startswith("proj.") for k in student.state_dict())


def test_bad_loss_terms_are_one_line_errors(tmp_path, capsys):
    for bad, needle in (("ce=1,zz=2", "zz"), ("ce=x", "ce=x"), ("ce", "TERM=WEIGHT")):
        assert _run(["train", "ammkd", "--out", str(tmp_path / "runs"), "--loss", bad]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_teacher_step_encodes_at_most_one_prompt_per_image() -> None:
    """More classes than images: each distinct class of the batch once, mapped back; else every class (exact CE)."""
    import torch

    from kdmobile.ammkd.train import class_prompts

    classes = [f"c{i}" for i in range(20)]
    prompts, index = class_prompts(torch.tensor([7, 3, 7, 19]), classes, "a {}.")
    assert prompts == ["a c3.", "a c7.", "a c19."] and index.tolist() == [1, 0, 1, 2]
    prompts, index = class_prompts(torch.tensor([1, 0, 1, 2]), classes[:3], "{}")
    assert prompts == ["c0", "c1", "c2"] and index.tolist() == [1, 0, 1, 2]
