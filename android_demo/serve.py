"""Serve the demo page, its ONNX Runtime Web files and bundles on 127.0.0.1 (`make web-demo`, and the tests)."""

from __future__ import annotations

import argparse
import json
import mimetypes
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WEB = HERE / "web"
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")  # what the page loads
MIME = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
        ".css": "text/css", ".json": "application/json", ".wasm": "application/wasm", ".png": "image/png",
        ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".onnx": "application/octet-stream",
        ".f32": "application/octet-stream", ".txt": "text/plain; charset=utf-8",
        ".sha256": "text/plain; charset=utf-8"}


def mime_type(path: Path) -> str:
    """The Content-Type the page needs (wasm and ES modules must be typed for the browser to accept them)."""
    return MIME.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _inside(root: Path, rel: str) -> Path | None:
    """root/rel if it stays inside root and is a file."""
    p = (root / rel).resolve()
    return p if p.is_file() and (p == root.resolve() or root.resolve() in p.parents) else None


def _sample(bundle: Path) -> dict[str, Any] | None:
    """The forecast sample for a forecast bundle; None otherwise, or when the bundle is refused (the page says why)."""
    from kdmobile.errors import KDError
    from kdmobile.export.android import forecast_sample

    try:
        return forecast_sample(bundle)
    except KDError:
        return None


class DemoServer:
    """A threaded HTTP server: / -> web/, /ort/ -> onnxruntime-web's dist, /bundles/NAME/ -> bundle directories."""

    def __init__(self, bundles: dict[str, Path], fixtures: Path | None = None, port: int = 0) -> None:
        self.bundles = {name: Path(p) for name, p in bundles.items()}
        self.samples = {name: _sample(p) for name, p in self.bundles.items()}
        self.fixtures = fixtures
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def index(self) -> list[dict[str, Any]]:
        """bundles/index.json: the page's bundle menu."""
        out = []
        for name, p in self.bundles.items():
            m = json.loads((p / "manifest.json").read_text())
            out.append({"name": name, "head": m["head"], "task": m["task"], "target": m["target"], "precision": m["precision"],
                        "sample": f"samples/{name}.json" if self.samples[name] else None})
        return out

    def resolve(self, path: str) -> tuple[bytes | Path | None, str]:
        """What a GET path serves: bytes or a file, with its Content-Type; None when not found."""
        rel = path.split("?", 1)[0].lstrip("/") or "index.html"
        if rel == "bundles/index.json":
            return json.dumps(self.index()).encode(), MIME[".json"]
        head, _, rest = rel.partition("/")
        if head == "samples" and rest.endswith(".json") and self.samples.get(rest[:-5]):
            return json.dumps(self.samples[rest[:-5]]).encode(), MIME[".json"]
        if head == "bundles":
            name, _, file = rest.partition("/")
            p = _inside(self.bundles[name], file) if name in self.bundles and file else None
        elif head == "ort":
            p = ORT_DIST / rest if rest in ORT_FILES else None
        elif head == "fixtures" and self.fixtures is not None:
            p = _inside(self.fixtures, rest)
        elif head == "node_modules":
            p = None
        else:
            p = _inside(WEB, rel)
        return (p, mime_type(p)) if p is not None and p.is_file() else (None, "")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                body, ctype = server.resolve(self.path)
                if body is None:
                    self.send_error(404)
                    return
                data = body if isinstance(body, bytes) else body.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                if self.path != "/report":
                    self.send_error(404)
                    return
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.reports.put(json.loads(raw))
                self.send_response(204)
                self.end_headers()

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> "DemoServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main(argv: list[str] | None = None) -> int:
    """`make web-demo`: serve the page with the given bundles until interrupted."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("bundles", nargs="+", metavar="BUNDLE", help="ONNX bundle directories (kdmobile export)")
    ap.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0 picks a free one)")
    args = ap.parse_args(argv)
    if not (ORT_DIST / ORT_FILES[0]).is_file():
        print(f"missing {ORT_DIST}: run `make android-tools` (npm ci) first", file=sys.stderr)
        return 2
    found = {Path(b).name: Path(b) for b in args.bundles if (Path(b) / "manifest.json").is_file()}
    if not found:
        print("no bundle directories given (export one: kdmobile export RUN --target onnx)", file=sys.stderr)
        return 2
    with DemoServer(found, port=args.port) as srv:
        print(f"kdmobile web demo: {srv.url}  (bundles: {', '.join(found)}; Ctrl-C stops)", flush=True)
        try:
            srv.thread.join()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
