"""`kdmobile doctor`: which runtime backends (the runtime's own discovery), CUDA and extras this installation has;
imports nothing heavy unless it is installed."""

from __future__ import annotations

import argparse

from kdmobile import __version__


def _extras_status() -> list[list[str]]:
    """Per extra of this installation ([runtime], [train], [export]): installed or not, and what is missing.

    Read from kdmobile's own package metadata (pyproject.toml's extras), without importing anything."""
    import re
    from importlib.metadata import PackageNotFoundError, requires, version

    try:
        reqs = requires("kdmobile") or []
    except PackageNotFoundError:  # running from a source tree that was never installed
        return []
    extras: dict[str, list[str]] = {}
    for req in reqs:
        name, _, marker = req.partition(";")
        found = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if found:
            extras.setdefault(found.group(1), []).append(name.strip())

    def missing(extra: str, seen: set[str]) -> list[str]:
        """What of an extra is not installed: its packages, and "[other]" for an included extra that is incomplete."""
        out: list[str] = []
        for req in extras.get(extra, []):
            m = re.match(r"([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", req)
            if m is None:
                continue
            if m.group(1).lower() == "kdmobile":  # an extra that includes other extras
                for sub in (x.strip() for x in (m.group(2) or "").split(",")):
                    if sub and sub not in seen:
                        seen.add(sub)
                        if missing(sub, seen):
                            out.append(f"[{sub}]")
                continue
            try:
                version(m.group(1))
            except PackageNotFoundError:
                if m.group(1) not in out:
                    out.append(m.group(1))
        return out

    rows = []
    for extra in ("runtime", "train", "export"):
        if extra not in extras:  # an installation older than these extras
            continue
        lacking = missing(extra, {extra})
        rows.append([f"[{extra}]", "no" if lacking else "yes", ", ".join(lacking)])
    return rows


def run_doctor(args: argparse.Namespace) -> int:
    """`kdmobile doctor`: the runtime backends, CUDA and kdmobile's extras installed here."""
    import importlib.util
    import platform

    from kdmobile.runtime.backends import available_backends
    from kdmobile.table import format_table

    rows = [[module, "yes" if v else "no", v or ""] for module, v in available_backends().items()]
    cuda = "no (torch missing)"
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            cuda = f"yes ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "no"
        except Exception as exc:  # noqa: BLE001 - a broken torch install means "no CUDA here"
            cuda = f"no ({type(exc).__name__})"
    rows.append(["CUDA", cuda, ""])
    print(f"kdmobile {__version__} on Python {platform.python_version()} ({platform.machine()})")
    print(format_table(["backend", "available", "version"], rows))
    extras = _extras_status()
    if extras:
        print()
        print(format_table(["extra", "installed", "missing"], extras))
    return 0
