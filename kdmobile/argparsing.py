"""argparse pieces every verb shares: a parser whose errors are one line, a sub-command with the verbs' help
layout, and comma lists; argparse-level only, so verb modules stay cheap to import."""

from __future__ import annotations

import argparse
from typing import Any


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"kdmobile: error: {message} (see '{self.prog} --help')\n")


def add_command(sub: Any, name: str, help: str, description: str, epilog: str | None = None,
                **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command whose description and examples epilog keep their line breaks in `--help`."""
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def add_group(sub: Any, name: str, help: str, description: str, dest: str) -> Any:
    """A verb that takes one of several kinds first (`train METHOD`, `data KIND`): its sub-parsers."""
    group = sub.add_parser(name, help=help, description=description)
    return group.add_subparsers(dest=dest, required=True, metavar=dest.upper(), parser_class=Parser)


def add_settings_flags(p: argparse.ArgumentParser, example: str) -> None:
    """--config / --set for a verb whose settings are a pydantic model, read by kdmobile.config.load_config (the
    one YAML/--set loader): defaults <- --config FILE <- --set KEY=VALUE <- the verb's own flags."""
    p.add_argument("--config", metavar="FILE",
                   help="YAML file of settings, keys as in --set (train: a run's config.yaml repeats that run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one setting, e.g. --set {example} (repeatable)")


def csv_list(text: str) -> list[str]:
    """`a, b,,c` -> ["a", "b", "c"]."""
    return [t.strip() for t in text.split(",") if t.strip()]


def add_trust_flag(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """--trust PUBKEY (repeatable): the bundle must carry a signature by one of these keys (kdmobile.signing)."""
    p.add_argument("--trust", action="append", default=[], metavar="PUBKEY",
                   help=f"{prefix}refuse a bundle unless its bundle.sig is a valid signature by this public key "
                        "(a .pub file from `kdmobile keygen`; repeat for several keys). Without --trust a bundle's "
                        "seal is checked and a signature is not required")
