"""The command layer of the tools that use a trained model or runs (cutmix-predict, -eval,
-export, -report, -search): every argument parser, parsed before torch loads, and one wrapper
that turns each outcome into an exit code. `cutmix-train` and `cutmix-torchrun` are Hydra apps
(cli.py, torchrun.py) with the same table.

Exit codes (README "Exit codes"):

- 0: done.
- 1: an unexpected error (a short message and the path of a log with the traceback);
  cutmix-predict: some files could not be classified; cutmix-export: the ONNX check failed.
- 2: a mistake in the input: one line naming it and how to fix it; nothing is written.
- 130: interrupted (Ctrl-C or SIGTERM): one line; nothing final is left half-written.

Parsers share parent parsers (torchvision's `get_args_parser(add_help=False)` pattern):
`--version` everywhere, `--out` and `--force` wherever a tool writes, `--device` wherever a model
runs. The tool modules are imported only after the arguments parsed, so `--help`, `--version`
and a mistyped argument answer without loading torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from cutmix_runner.errors import UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PACKAGES = ("cutmix-runner", "torch", "torchvision", "timm")


def version_text() -> str:
    """Versions from the installed packages' metadata: no import of torch or timm."""
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    first, *others = PACKAGES
    return (f"{first} {version(first)} (python {platform.python_version()}, "
            + ", ".join(f"{name} {version(name)}" for name in others) + ")")


class _Version(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_text())
        parser.exit()


def common() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--version", action=_Version)
    return parser


def writes(default: str) -> argparse.ArgumentParser:
    """--out and --force, for a tool that writes; `default` says where it writes otherwise."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out", "--output", dest="out", type=Path, help=f"default: {default}")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    return parser


def runs_a_model(default: str | None = "cpu") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    shown = f"{default} (default)" if default else "auto"
    parser.add_argument("--device", default=default,
                        help=f"cpu, cuda or cuda:N; {shown}")
    return parser


def _parser(prog: str, description: str, *parents: argparse.ArgumentParser
            ) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description,
                                   parents=[common(), *parents])


def run(program: str, work: Callable[[], int | None],
        interrupted: str = "interrupted") -> NoReturn:
    """Do `work` and exit with the code of its outcome (the table above). SIGTERM (a batch
    system's stop) is handled as Ctrl-C is."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = work()
    except UserError as exc:
        _say(program, f"error: {exc}")
        sys.exit(EXIT_USAGE)
    except OSError as exc:  # an output that cannot be written, a file that vanished
        _say(program, f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        _say(program, interrupted)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: the traceback goes to a log, the user gets its path
        log = _log_traceback(program)
        _say(program, f"unexpected error ({type(exc).__name__}: {str(exc)[:200]}); the "
                      f"traceback is in {log}; please report it")
        sys.exit(EXIT_FAILED)
    sys.exit(code or EXIT_OK)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _say(program: str, text: str) -> None:
    print(f"{program}: {text}", file=sys.stderr)


def _log_traceback(program: str) -> Path:
    folder = Path(tempfile.gettempdir()) / "cutmix-runner"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{program}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.write_text(traceback.format_exc())
    return log


def _tool(name: str) -> Any:
    """A tool module, imported once the arguments are known good."""
    return importlib.import_module(f"cutmix_runner.{name}")


def _command(argv: list[str] | None, program: str) -> str:
    return f"{program} " + " ".join(sys.argv[1:] if argv is None else argv)


# ---------------------------------------------------------------- cutmix-predict


def predict_parser() -> argparse.ArgumentParser:
    parser = _parser("cutmix-predict", "Classify image files with a trained run.",
                     writes("the terminal"), runs_a_model())
    parser.add_argument("run", type=Path, help="run directory (its best checkpoint) or checkpoint")
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders (recursive)")
    parser.add_argument("--topk", type=int, default=3, help="labels per file (default 3)")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    parser.add_argument("--tta", choices=["none", "flip"], default="none",
                        help="flip: average with the mirror image, as the test protocol does")
    parser.add_argument("--batch-size", type=int, default=256)
    return parser


def predict(argv: list[str] | None = None) -> NoReturn:
    parser = predict_parser()
    args = parser.parse_args(argv)
    if args.topk < 1 or args.batch_size < 1:
        parser.error("--topk and --batch-size must be at least 1")
    run("cutmix-predict", lambda: _tool("predict").run(args))


# ---------------------------------------------------------------- cutmix-eval


def eval_parser() -> argparse.ArgumentParser:
    parser = _parser("cutmix-eval", "Accuracy of a trained run under CIFAR-10-C corruptions.",
                     writes("RUN_DIR/eval"), runs_a_model())
    parser.add_argument("run", type=Path, help="run directory (its best checkpoint)")
    parser.add_argument("--corruptions", default="all",
                        help="comma-separated names or 'all' (the 15 of CIFAR-10-C; frost needs "
                             "the robustness extra)")
    parser.add_argument("--cifar10c", type=Path, metavar="DIR",
                        help="read the released CIFAR-10-C .npy files in DIR instead of "
                             "generating the corruptions")
    parser.add_argument("--severities", default="1-5", help="e.g. 1-5 (default), 3, 1,3,5")
    parser.add_argument("--reference", type=Path, help="a run with eval/eval.json: adds mCE")
    parser.add_argument("--limit", type=int, help="only the first N test images")
    parser.add_argument("--seed", type=int, default=0, help="corruption seed (default 0)")
    parser.add_argument("--batch-size", type=int,
                        help="images per forward pass (default: the run's "
                             "trainer.eval_batch_size, as its own test scoring)")
    parser.add_argument("--data-root", help="where the run's data set is, if not where it "
                        "was trained from")
    return parser


def evaluate(argv: list[str] | None = None) -> NoReturn:
    parser = eval_parser()
    args = parser.parse_args(argv)
    if args.seed < 0 or (args.batch_size is not None and args.batch_size < 1) or (
            args.limit is not None and args.limit < 1):
        parser.error("--seed must be >= 0, --batch-size and --limit at least 1")
    run("cutmix-eval", lambda: _tool("corruption_eval").run(args, _command(argv, "cutmix-eval")))


# ---------------------------------------------------------------- cutmix-export


def export_parser() -> argparse.ArgumentParser:
    parser = _parser("cutmix-export", "Export a trained run to ONNX (uint8 32x32 RGB in, logits "
                     "out), verify it in onnxruntime against torch, and write a model card.",
                     writes("RUN_DIR/export/model.onnx"))
    parser.add_argument("run", type=Path, help="run directory (uses its best checkpoint) or a "
                        "checkpoint file")
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--images", type=int, default=1024,
                        help="test images to verify on (at least 256, or the whole test set "
                        "when it is smaller; default 1024)")
    parser.add_argument("--data-root", help="where the run's data set is, if not where it "
                        "was trained from")
    return parser


def export(argv: list[str] | None = None) -> NoReturn:
    args = export_parser().parse_args(argv)
    run("cutmix-export", lambda: _tool("export").run(args))


# ---------------------------------------------------------------- cutmix-report


def report_parser() -> argparse.ArgumentParser:
    parser = _parser("cutmix-report", "Runs and sweeps -> tables, plots and verdicts on the "
                     "post's claims.", writes("./report"))
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--arm-key", action="append", dest="arm_keys",
                        help="override key that defines the arms (repeatable); needed when runs "
                             "differ in more than one key besides the seed and the strata")
    parser.add_argument("--stratum-key", action="append", dest="stratum_keys", default=[],
                        help="override key held fixed within comparisons, like the data size "
                             "(data.train_subset, always one); repeatable, e.g. schedule")
    parser.add_argument("--reference", action="append", default=[],
                        help="the arm others are compared with, as its value (e.g. study_none); "
                             "repeatable: per stratum, the first that ran; default: the first arm")
    return parser


def report(argv: list[str] | None = None) -> NoReturn:
    args = report_parser().parse_args(argv)
    run("cutmix-report", lambda: _tool("report").run(args, _command(argv, "cutmix-report")))


# ---------------------------------------------------------------- cutmix-search


def search_parser() -> argparse.ArgumentParser:
    parser = _parser("cutmix-search", "A resumable Optuna search over the staged schedule.",
                     writes("./search (trial runs, the report and the default storage)"),
                     runs_a_model(default=None))
    parser.add_argument("overrides", nargs="*", help="cutmix-train overrides for every trial")
    parser.add_argument("--trials", type=int, default=10, help="trials to add (default 10)")
    parser.add_argument("--storage", help="Optuna RDB URL (default: sqlite:///OUT/study.db)")
    parser.add_argument("--study-name", default="cutmix-search")
    parser.add_argument("--space", default="schedule", help="configs/search/NAME.yaml or a path")
    parser.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed")
    return parser


def search(argv: list[str] | None = None) -> NoReturn:
    parser = search_parser()
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after options
    if args.trials < 0:
        parser.error("--trials must be >= 0")
    args.out = args.out or Path("search")
    if args.device is not None:  # the trials' trainer.device; else the config's (auto)
        args.overrides = [*args.overrides, f"trainer.device={args.device}"]
    run("cutmix-search", lambda: _tool("search").run(args, _command(argv, "cutmix-search")),
        interrupted="interrupted; the trial in progress is marked failed, the study keeps the "
                    "others: run the same command to continue")
