"""The `kdmobile` command: train, export, bench, predict, data, keygen, doctor.

Heavy imports (torch, open_clip, converters) happen inside each verb, and the export, predict and bench verbs are
defined in their stage's module, imported only when that verb runs: `--help` stays fast and `predict` / `bench
BUNDLE` work with only the [runtime] extra installed. A verb whose extra is missing says which one to install.
User errors print one line and exit 2; environment failures (disk full, read-only folder, a converter crash) print
one line with the cause and exit 1; Ctrl-C exits 130 and leaves only complete files behind.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from kdmobile import __version__
from kdmobile.argparsing import Parser, add_command, add_group
from kdmobile.doctor import run_doctor
from kdmobile.errors import KDError, ToolError, UserError, exit_code, format_error
from kdmobile.train.cli import register as train_verb


def _data_navier_stokes(args: argparse.Namespace) -> int:
    from kdmobile.data.navier_stokes import generate_to_file

    if args.check:  # before generating: a grid the check cannot take must not cost the user a whole generation
        from kdmobile.data.ns_physics import check_grid

        check_grid(args.solve_res or args.res)
    info: dict[str, Any] = {}
    path = generate_to_file(args.out, n=args.n, res=args.res, visc=args.visc, t_final=args.t_final, seed=args.seed,
                            solve_res=args.solve_res, scheme=args.scheme,
                            batch_size=args.batch_size, device=args.device, dt=args.dt, forcing=args.forcing,
                            dt_record=args.record_every, dtype=args.dtype, cpu_threads=args.threads,
                            progress=not args.no_progress, restart=args.restart, info=info)
    threads = f"{info['threads']} thread{'s' if info['threads'] > 1 else ''}"
    where = f"cpu, {threads}" if info["device"] == "cpu" else info["device"]
    print(f"wrote {path} ({args.n} trajectories; this run {info['seconds']:.1f} s on {where})")
    if args.check:
        from kdmobile.data.ns_physics import physics_check

        r = physics_check(args.visc, args.res, args.solve_res, args.scheme)
        print(f"physics check {'passed' if r['passed'] else 'FAILED'}: rel L2 vs a {r['reference_res']}² solve "
              f"{max(r['rel_l2_vs_reference']):.4f} over t <= {r['t_check']:g} (limit {r['tol_rel']}); enstrophy "
              f"budget error {r['enstrophy_budget_rel_error']:.2e} (limit {r['tol_budget']}); spectrum slope "
              f"{r['spectrum_slope']:.2f} (k {r['spectrum_band'][0]}-{r['spectrum_band'][1]}, limit -3)")
        return 0 if r["passed"] else 1
    return 0


_NS_DESCRIPTION = """\
Pseudo-spectral solver of 2-D incompressible Navier-Stokes on the unit torus, as in the FNO paper: Gaussian random
field initial vorticity, forcing 0.1(sin 2pi(x+y) + cos 2pi(x+y)), Crank-Nicolson viscosity, one snapshot per unit
time. Writes .npz (u: N,T,H,W plus a, t, meta), .npy (u only) or .mat (MATLAB v7.3, FNO's layout u: N,H,W,T,
a: N,H,W, t). Saved chunk by chunk in OUT.parts/: rerunning an interrupted command resumes it.
"""


def _add_data(sub: Any) -> None:
    kinds = add_group(sub, "data", "generate datasets (navier-stokes)",
                      "Generate training data the toolkit can make itself.", "kind")
    ns = add_command(kinds, "navier-stokes", "2-D Navier-Stokes vorticity trajectories (FNO-paper generator)",
                     _NS_DESCRIPTION)
    ns.add_argument("--out", required=True, help="output file (.npz, .npy or .mat); written atomically at the end")
    ns.add_argument("--n", type=int, default=20, help="number of trajectories (default 20)")
    ns.add_argument("--res", type=int, default=64, help="grid size stored (default 64)")
    ns.add_argument("--solve-res", type=int, default=None,
                    help="grid size solved on, a multiple of --res (default --res); the stored field keeps every "
                         "k-th point of the fine solve, as FNO stored its 256² solves at 64²")
    ns.add_argument("--scheme", choices=["euler", "rk3"], default="euler",
                    help="time scheme: euler (FNO's forward Euler + Crank-Nicolson, default) or rk3 (SSP Runge-Kutta 3 "
                         "with exact viscosity: stable at the CFL step, far faster for --visc 1e-5)")
    ns.add_argument("--visc", type=float, default=1e-3, help="viscosity nu (default 1e-3)")
    ns.add_argument("--t-final", type=float, default=20.0, help="simulated time (default 20)")
    ns.add_argument("--record-every", type=float, default=1.0, help="time between snapshots (default 1)")
    ns.add_argument("--dt", type=float, default=None, help="time step (default: adaptive, at most 1e-3)")
    ns.add_argument("--forcing", choices=["fno", "none"], default="fno", help="forcing term (default fno)")
    ns.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="solver and file precision (default float32)")
    ns.add_argument("--seed", type=int, default=0, help="seed of the initial conditions (default 0)")
    ns.add_argument("--batch-size", type=int, default=32,
                    help="trajectories per chunk: one batch on CUDA, split over the threads on CPU (default 32)")
    ns.add_argument("--threads", type=int, default=None, help="CPU worker threads (default: all CPUs)")
    ns.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if available)")
    ns.add_argument("--restart", action="store_true",
                    help="discard an unfinished generation in OUT.parts/ instead of resuming it")
    ns.add_argument("--no-progress", action="store_true", help="no progress bar")
    ns.add_argument("--check", action="store_true",
                    help="then check the physics at these settings (kdmobile.data.ns_physics: within 3 %% of a solve "
                         "on twice the grid over t <= 2, enstrophy budget closed within 2 %%, spectrum at least "
                         "as steep as k^-3); exit 1 if it fails")
    ns.set_defaults(func=_data_navier_stokes)


_KEYGEN_HELP = """\
An ECDSA P-256 key pair. Sign bundles with the private key (`kdmobile export RUN --sign NAME.key`); give the public
key to whoever runs them (`kdmobile predict BUNDLE IMAGE --trust NAME.pub`, bench and export --verify alike, the
Android core's BundleSignature, the web page's ?trust=URL): a bundle changed or re-sealed after signing, or signed
by another key, is then refused. Existing files are never overwritten; keep NAME.key out of version control.
"""


def _keygen(args: argparse.Namespace) -> int:
    from kdmobile.signing import keygen

    private, public, kid = keygen(args.prefix)
    print(f"wrote {private} (private: keep it secret; kdmobile export RUN --sign {private})")
    print(f"wrote {public} (public: give it to those who run your bundles; --trust {public})")
    print(f"key id {kid}")
    return 0


# ------------------------------------------------------------------------------------------------- main
# Verbs defined next to their stage: (name, module with register(sub), extra it needs, one-line help for `--help`).
# A module is imported only when its verb runs (or by build_parser() for the whole tree); until then, and when its
# extra is missing, a stub stands in that lists the verb and, when run, names the extra to install.
_LAZY_VERBS: tuple[tuple[str, str, str, str], ...] = (
    ("export", "kdmobile.export.cli", "export",
     "export a run to verified ONNX / TFLite / CoreML / ExecuTorch bundles"),
    ("predict", "kdmobile.runtime.cli", "runtime",
     "run a bundle on images (retrieval) or frame arrays (forecast); no torch"),
    ("bench", "kdmobile.bench.cli", "runtime",
     "latency, memory, size and metric of bundles vs teachers, with CI gates"),
)

# Top-level modules of each extra (what a ModuleNotFoundError names), to turn one into "install the [extra]".
_EXTRA_MODULES: dict[str, frozenset[str]] = {
    "runtime": frozenset({"onnxruntime", "ai_edge_litert", "psutil", "cryptography"}),
    "plot": frozenset({"matplotlib"}),  # also in [train], which `kdmobile train` names instead
    "train": frozenset({"torch", "torchvision", "timm", "open_clip", "sklearn", "scipy", "h5py", "safetensors"}),
    "export": frozenset({"onnx", "onnxscript", "onnx_ir", "litert_torch", "ai_edge_quantizer", "coremltools",
                         "executorch", "torchao"}),
}
_VERB_EXTRA = {"train": "train", "data": "train", "export": "export"}  # predict and bench: what the module needs

# Further verbs registered by plugins or tests: each a register(sub) function.
_EXTRA_VERBS: list[Callable[[Any], None]] = []


def _extra_of(module: str | None) -> str | None:
    """The extra that provides a top-level module (None: not one of kdmobile's optional dependencies)."""
    top = (module or "").split(".")[0]
    return next((extra for extra, mods in _EXTRA_MODULES.items() if top in mods), None)


def missing_extra_message(verb: str, err: ModuleNotFoundError) -> str | None:
    """'kdmobile VERB needs the [EXTRA] extra ...' for a missing optional dependency; None for anything else."""
    extra = _extra_of(err.name)
    if extra is None:
        return None
    extra = _VERB_EXTRA.get(verb, extra)
    return (f"kdmobile {verb} needs the [{extra}] extra ({err.name.split('.')[0]} is not installed): "
            f"pip install 'kdmobile[{extra}]'")


def _add_stub(sub: Any, name: str, extra: str, help_text: str, missing: ModuleNotFoundError | None) -> None:
    """A verb whose module is not loaded: listed in `--help`; when run, it names the extra to install."""
    def stub(args: argparse.Namespace) -> int:
        if missing is not None:
            raise missing
        raise UserError(f"kdmobile {name} was not loaded by this parser (build it with build_parser(load={name!r}))")

    p = sub.add_parser(name, help=help_text, add_help=False,
                       description=f"{help_text} (needs the [{extra}] extra: pip install 'kdmobile[{extra}]')")
    p.set_defaults(func=stub, _stub=True)


def _add_lazy_verbs(sub: Any, load: str | None) -> None:
    """Register each stage's verb: for real when `load` names it (or is "*"), else a stub (also when its extra is
    missing and its module cannot be imported)."""
    import importlib

    for name, module, extra, help_text in _LAZY_VERBS:
        missing = None
        if load in ("*", name):
            try:
                importlib.import_module(module).register(sub)
                continue
            except ModuleNotFoundError as err:
                if _extra_of(err.name) is None:
                    raise
                missing = err
        _add_stub(sub, name, extra, help_text, missing)


def build_parser(load: str | None = "*") -> argparse.ArgumentParser:
    """The argument parser; `load` names the one stage verb whose module is imported ("*": all, for the docs and
    tests; None: none, for `kdmobile --help`)."""
    parser = Parser(prog="kdmobile", description="From large teachers to a small quantized model on a phone.")
    parser.add_argument("--version", action="version", version=f"kdmobile {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=Parser)
    train_verb(sub)
    _add_data(sub)
    _add_lazy_verbs(sub, load)
    for register in _EXTRA_VERBS:
        register(sub)
    k = add_command(sub, "keygen", "make a key pair for signing bundles (export --sign, --trust)", _KEYGEN_HELP)
    k.add_argument("prefix", metavar="NAME", help="writes NAME.key (private, mode 0600) and NAME.pub (public)")
    k.set_defaults(func=_keygen)
    d = sub.add_parser("doctor", help="show which backends and extras are installed")
    d.set_defaults(func=run_doctor)
    return parser


def _verb_of(argv: Sequence[str]) -> str | None:
    """The verb on a command line: the first argument that is not an option (the top level takes no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(load=_verb_of(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "_stub", False):  # a stub's flags are the real verb's: not checked here
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as err:
        message = missing_extra_message(args.verb, err)
        if message is None:
            raise
        print(format_error(ToolError(message)), file=sys.stderr)
        return 1
    except (KDError, OSError) as err:  # OSError: the environment failed (disk full, read-only folder, permissions)
        print(format_error(err), file=sys.stderr)
        return exit_code(err)
    except KeyboardInterrupt:
        print("kdmobile: interrupted; only complete files were kept (train: rerun with --resume; data: rerun the "
              "same command to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
