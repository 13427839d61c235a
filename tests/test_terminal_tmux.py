"""Acceptance: the CLI as a new user sees it in a 120-column terminal (tmux), from training to bench.

Checks the run plan with an estimate, one persistent line per epoch above the bars, no third-party INFO/WARNING
lines, and no line wider than 120 columns in the export and bench output. A tiny configuration keeps it < ~60 s.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

WIDTH = 120
REPO = Path(__file__).resolve().parent.parent
TINY = ("--teachers kd-vit-tiny,kd-rn-tiny --teacher-epochs 1 --epochs 2 --max-train 96 --max-test 40 "
        "--set embed_dim=16 --set student=mobilenetv3_small_050 --batch-size 32 --set teacher_train.batch_size=32")
# Lines libraries print on their own: none may reach a normal run's terminal.
NOISE = re.compile(r"^(WARNING|INFO|W\d{4}|I\d{4})[: ]|WARNING:root|No pretrained weights|XNNPACK|\b[A-Z]\w*Warning: ")

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (`make test` installs it)")


class Pane:
    """A detached tmux session of WIDTH columns running bash in a directory."""

    def __init__(self, cwd: Path) -> None:
        self.name = f"kdm-{uuid.uuid4().hex[:8]}"
        env = f"PYTHONPATH={shlex.quote(str(REPO))} OMP_NUM_THREADS=1 TERM=xterm-256color"
        subprocess.run(["tmux", "new-session", "-d", "-x", str(WIDTH), "-y", "50", "-s", self.name, "-c", str(cwd),
                        f"env {env} bash --norc --noprofile"], check=True)
        subprocess.run(["tmux", "set-option", "-t", self.name, "history-limit", "20000"], check=True)

    def run(self, command: str, timeout: float) -> str:
        """Type `command`, wait for it to finish, and return the whole pane history (wrapped lines joined)."""
        token = f"__done_{uuid.uuid4().hex[:6]}__"
        subprocess.run(["tmux", "send-keys", "-t", self.name, f"{command}; echo {token} rc=$?", "Enter"], check=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.capture()
            if re.search(rf"^{token} rc=\d+", text, re.M):
                return text
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout}s:\n{self.capture()}")

    def capture(self) -> str:
        out = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", self.name],
                             capture_output=True, text=True, check=True)
        return out.stdout

    def clear(self) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, "clear", "Enter"], check=True)
        time.sleep(0.3)
        subprocess.run(["tmux", "clear-history", "-t", self.name], check=True)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], check=False)


def _section(text: str, start: str) -> list[str]:
    """The lines after the command line that contains `start` (up to the done marker)."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if start in line)
    out = []
    for line in lines[first + 1:]:
        if line.startswith("__done_"):
            break
        out.append(line.rstrip())
    return out


def test_first_hour_in_a_120_column_terminal(tmp_path):
    kd = f"{shlex.quote(sys.executable)} -m kdmobile.cli"
    pane = Pane(tmp_path)
    try:
        train = pane.run(f"{kd} train ammkd {TINY} --out runs --name demo", timeout=150)
        lines = _section(train, "train ammkd")
        assert re.search(r"__done_\w+ rc=0", train), train
        text = "\n".join(lines)
        assert "run plan: ammkd -> runs/demo" in text and "stages" in text and "teacher files" not in text
        assert re.search(r"^  estimate   ~\d", text, re.M), text  # the probed estimate, before training
        assert re.search(r"^estimate  teacher/kd-vit-tiny: ", text, re.M), text  # refined from the first batches
        for stage, epochs in (("teacher/kd-vit-tiny", 1), ("teacher/kd-rn-tiny", 1), ("student", 2)):
            for e in range(1, epochs + 1):  # one line per epoch, still on screen after the run
                assert re.search(rf"^{re.escape(stage)}\s+ep {e}/{epochs}\s+loss \d.*val top1 .*run left", text,
                                 re.M), (stage, e, text)
            assert re.search(rf"^done      {re.escape(stage)}: {epochs} epochs? in ", text, re.M), (stage, text)
        assert "teacher:kd-vit-tiny" in text and "total training time" in text
        assert not [line for line in lines if NOISE.search(line)], text

        pane.clear()
        export = pane.run(f"{kd} export runs/demo --target onnx,tflite --precision int8 --out out/bundles",
                          timeout=150)
        assert re.search(r"__done_\w+ rc=0", export), export
        pane.clear()
        bench = pane.run(f"{kd} bench runs/demo --no-teachers --runs 10 --warmup 2 --max-time 5 --out out/bench",
                         timeout=120)
        assert re.search(r"__done_\w+ rc=0", bench), bench
        ex_lines, be_lines = _section(export, "export runs/demo"), _section(bench, "bench runs/demo")
        for lines_ in (ex_lines, be_lines):
            assert lines_ and max(len(line) for line in lines_) <= WIDTH, "\n".join(lines_)
            assert not [line for line in lines_ if NOISE.search(line)], "\n".join(lines_)
        ex, be = "\n".join(ex_lines), "\n".join(be_lines)
        onnx_int8 = re.search(r"int8 \((w8a32|u8s8|s8s8|dynamic)\)", ex)  # `auto` measures: any of the four
        # the export table names the int8 format; TFLite's is auto's timing choice, and static and dynamic tie on this
        # tiny student (a loaded machine picks either), so either name is right
        assert onnx_int8 and re.search(r"tflite +int8 \((dynamic|static)\)", ex)
        assert be.count("demo-") >= 2 and "torch eager" not in be and "WARNING" not in be  # found the bundles
        assert f"int8 ({onnx_int8.group(1)})" in be and (tmp_path / "out" / "bench" / "latency_vs_accuracy.png").is_file()
    finally:
        pane.close()
