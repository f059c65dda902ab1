"""`cutmix-torchrun`: torchrun itself (torch.distributed.run) running `-m cutmix_runner`, so
that a bad input stays one line.

    cutmix-torchrun --nproc_per_node=2 data.root=../shared/data/cifar10 trainer.sync_bn=true

is `torchrun --nproc_per_node=2 -m cutmix_runner data.root=... trainer.sync_bn=true`. Leading
`--options` are torchrun's; the rest are cutmix-train's overrides. Plain torchrun works too, but
when a rank exits non-zero it adds its own report and traceback below our one line; here a
rank's exit status 2 (bad input, already said in one line by rank 0) or 130 (a stop request,
which every rank obeys after the same step) is passed on without it, and any other failure gets
one line naming the rank and its exit status.
"""

from __future__ import annotations

import logging
import signal
import sys


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(torchrun's options, cutmix-train's overrides). An option given as `--name value` takes
    the next word as its value: overrides always hold "=" or start with "~" or "+"."""
    options: list[str] = []
    rest = list(argv)
    while rest and rest[0].startswith("--"):
        option = rest.pop(0)
        options.append(option)
        if "=" not in option and rest and not rest[0].startswith(("-", "~", "+")) \
                and "=" not in rest[0]:
            options.append(rest.pop(0))
    return options, rest


def check_process_count(args: object) -> None:
    """torchrun's --nproc_per_node, checked before anything launches: a positive count, or
    cpu, gpu (CUDA needed) or auto; torch itself would answer with a traceback."""
    value = str(getattr(args, "nproc_per_node", "1"))
    if value in ("cpu", "auto"):
        return
    if value == "gpu":
        import torch

        if not torch.cuda.is_available():
            fail("--nproc_per_node=gpu, but there is no CUDA device here; give a number "
                 "(processes on this CPU) or cpu")
        return
    if not value.isdigit() or int(value) < 1:
        fail(f"--nproc_per_node={value}: give a number of processes (1 or more), or cpu, gpu "
             "or auto")


HELP = """\
usage: cutmix-torchrun [TORCHRUN OPTIONS...] [CUTMIX-TRAIN OVERRIDES...]

One cutmix-train run on N processes (DistributedDataParallel): torchrun itself running
`-m cutmix_runner`. Leading --options are torchrun's, the rest cutmix-train's overrides.

  --nproc_per_node=N     processes on this machine (a number, or cpu, gpu, auto)
  --nnodes=N             machines (with --rdzv_endpoint, --rdzv_backend and --node_rank)
  --torchrun-help        every torchrun option (loads torch)
  --version              print the versions and exit
  -h, --help             show this help and exit

example: cutmix-torchrun --nproc_per_node=2 data.root=../shared/data/cifar10 trainer.sync_bn=true
exit status: 0 done, 1 a rank failed unexpectedly, 2 bad input, 130 interrupted (README)."""


def early_answers(options: list[str]) -> bool:
    """--help and --version answer before torch loads (it takes seconds); True if answered."""
    if "-h" in options or "--help" in options:
        print(HELP)
    elif "--version" in options:
        from cutmix_runner.commands import version_text

        print(version_text())
    else:
        return False
    return True


def fail(message: str) -> None:
    print(f"cutmix-torchrun: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    options, overrides = split(sys.argv[1:])
    if early_answers(options):
        return
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "--torchrun-help" in options:
        get_args_parser().print_help()
        return
    if "-m" in overrides or "--multirun" in overrides:
        fail("torchrun trains one run: drop -m, or sweep with LAUNCHER=local")
    args = get_args_parser().parse_args([*options, "-m", "cutmix_runner", *overrides])
    check_process_count(args)
    # torchrun logs each failed rank at ERROR with a traceback (the ranks say why themselves),
    # and a note that it set OMP_NUM_THREADS=1 per rank (what a 2-core box wants anyway).
    for name in list(logging.root.manager.loggerDict):  # each sets its own level: one by one
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as exc:
        # Every rank meets the same bad input (2) or stop request (130); once the first has
        # exited, torchrun stops the others with SIGTERM.
        codes = {failure.exitcode for failure in exc.failures.values()}
        for said in (2, 130):
            if said in codes and codes <= {said, -signal.SIGTERM}:
                sys.exit(said)
        rank, failure = min(exc.failures.items())
        how = (f"was killed by signal {-failure.exitcode}" if failure.exitcode < 0
               else f"exited with status {failure.exitcode}; its own lines above say why")
        print(f"cutmix-torchrun: error: rank {rank} {how}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, SignalException):
        # Ctrl-C or a SIGTERM reached the launcher, which passes it on to every rank; they stop
        # after the same step and rank 0 says how to resume.
        sys.exit(130)


if __name__ == "__main__":
    main()
