"""Two processes under torchrun (gloo on CPU) train one AMMKD run on a streaming photo folder, through the teacher
view cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_image_folders import _folder


def test_torchrun_two_processes_write_one_run(tmp_path: Path) -> None:
    root = _folder(tmp_path / "photos", {"train": 8, "val": 3})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "kdmobile.cli", "train", "ammkd", "--data", f"imagefolder:{root}", "--out", str(tmp_path / "runs"),
           "--name", "ddp", "--image-size", "24", "--set", "teacher_train.epochs=1", "--epochs", "1",
           "--workers", "1", "--no-progress", "--device", "cpu", "--set", "data.views=2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["ddp"], runs  # both ranks agreed on one directory (no ddp2)
    run = tmp_path / "runs" / "ddp"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split_sizes"]["test"] == 9 and "student" in metrics["models"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r.get("event") == "epoch" and r.get("stage") == "student"]
    assert len(epochs) == 1  # written once, by rank 0
    assert done.stdout.count("run plan: ammkd") == 1 and "2 processes" in done.stdout
    assert (run / "views" / "shard_00000.safetensors").is_file()  # the teacher cache, built once for both ranks
