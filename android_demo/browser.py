"""Drive the demo page in headless Chromium from Python: open a URL, wait for the page's POSTed report."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from typing import Any

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  "--disable-dev-shm-usage", "--mute-audio")


def chromium() -> str:
    """Path of Debian's chromium (or chromium-headless-shell); a missing browser is an error, not a skip."""
    for name in ("chromium", "chromium-headless-shell"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("chromium is not installed: run `make android-tools`")


def run_page(server: Any, bundle: str, cases: str, runs: int = 20, timeout: float = 180.0,
             trust: str | None = None) -> dict[str, Any]:
    """Open index.html?bundle=...&auto=...[&trust=...] in a fresh headless Chromium profile; return the page's
    report."""
    params = {"bundle": bundle, "auto": cases, "report": "/report", "runs": runs, **({"trust": trust} if trust else {})}
    query = urllib.parse.urlencode(params)
    url = f"{server.url}index.html?{query}"
    while not server.reports.empty():
        server.reports.get_nowait()
    profile = tempfile.mkdtemp(prefix="kdm-chromium-")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return server.reports.get(timeout=0.5)
            except queue.Empty:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"chromium gave no report for {url} (exit {proc.poll()}):\n{tail}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # our own process group only
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
