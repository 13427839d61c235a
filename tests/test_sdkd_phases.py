"""Two-phase SDKD (a student continued from a file), label-scarce training with teacher pseudo-labels, and the
training loop's keep-best weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdmobile.cli import main
from kdmobile.config import TrainConfig
from kdmobile.models import load_model
from kdmobile.sdkd.labels import labelled_windows
from kdmobile.train.loop import StepOutput, Trainer

from test_sdkd import TINY


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDMOBILE_CACHE", str(tmp_path / "cache"))


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_student_init_continues_the_phase1_student(tmp_path: Path) -> None:
    """Phase 2 starts from the phase-1 file: with 0 extra epochs both students are that file, weight for weight."""
    runs = tmp_path / "runs"
    assert main(["train", "sdkd", *TINY, "--kd", "none", "--out", str(runs), "--name", "p1"]) == 0
    first = runs / "p1" / "student.safetensors"
    assert main(["train", "sdkd", *TINY, "--kd", "output", "--epochs", "0", "--teachers-from", str(runs / "p1"),
                 "--student-init", str(first), "--out", str(runs), "--name", "p2"]) == 0
    a = load_model(first)[0].state_dict()
    for stage in ("student", "student_nokd"):  # the KD student and its equal-budget no-KD control
        b = load_model(runs / "p2" / f"{stage}.safetensors")[0].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((runs / "p2" / "metrics.json").read_text())["student_init"] == str(first)


@pytest.mark.parametrize("which", ["missing", "teacher"])
def test_a_wrong_student_init_is_one_line_before_training(tmp_path: Path, capsys, which: str) -> None:
    runs = tmp_path / "runs"
    if which == "teacher":  # a file of another architecture
        assert main(["train", "sdkd", *TINY, "--kd", "none", "--out", str(runs), "--name", "t"]) == 0
        capsys.readouterr()
    path = runs / "t" / "teachers" / "teacher.safetensors" if which == "teacher" else tmp_path / "nope.safetensors"
    assert main(["train", "sdkd", *TINY, "--student-init", str(path), "--out", str(runs), "--name", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "student_init" in err
    assert not (runs / "x" / "log.jsonl").exists()


def test_labelled_windows_cut_whole_trajectories() -> None:
    assert labelled_windows(list(range(10)), 60, 0.1) == 6
    assert labelled_windows(list(range(10)), 60, 0.25) == 18  # ceil(2.5) trajectories
    assert labelled_windows(list(range(10)), 60, 0.01) == 6  # at least one
    assert labelled_windows(list(range(10)), 60, 1.0) == 60


def test_label_fraction_pseudo_labels_the_rest_only_with_kd(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert main(["train", "sdkd", *TINY, "--label-fraction", "0.5", "--kd", "output", "--out", str(runs),
                 "--name", "l"]) == 0
    metrics = json.loads((runs / "l" / "metrics.json").read_text())
    n_train, n_lab = metrics["split_windows"]["train"], metrics["labelled_train_windows"]
    assert 0 < n_lab < n_train
    events = [r for r in _log(runs / "l") if r.get("event") == "pseudo_labels"]
    assert [(e["stage"], e["windows"]) for e in events] == [("student", n_train - n_lab)]  # not for the no-KD one


def test_keep_best_returns_the_best_epoch(tmp_path: Path) -> None:
    """keep_best: the weights after the epoch with the lowest validation value, not the last epoch's."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    data = TensorDataset(torch.randn(16, 2), torch.randn(16, 1))
    values, seen = iter([3.0, 1.0, 2.0, 5.0]), []

    def evaluate(m: nn.Module) -> dict[str, float]:
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"mse": next(values)}

    def step(m: nn.Module, batch) -> StepOutput:
        x, y = batch
        return StepOutput(torch.mean((m(x) - y) ** 2))

    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.1, device="cpu", keep_best=True)
    out = Trainer("s", model, cfg, tmp_path / "s", None, 0, progress=False).fit(data, step, evaluate)
    assert all(torch.equal(out.state_dict()[k], seen[1][k]) for k in seen[1])
    assert not all(torch.equal(seen[3][k], seen[1][k]) for k in seen[1])
