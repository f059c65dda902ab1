"""Training and evaluation throughput, measured side by side in one process.

Absolute images/s vary with the host; the ratios between rows measured in the same run are
what to compare. Writes a Markdown table (and the exact command) to --out.

    python scripts/bench_throughput.py --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cutmix_runner import build
from cutmix_runner.config import (
    ModelConfig,
    RegularizerConfig,
    RunConfig,
    StageConfig,
    TrainerConfig,
)
from cutmix_runner.data import Splits, train_batches
from cutmix_runner.evaluation import predict
from cutmix_runner.mixing import CutMix
from cutmix_runner.model import build_model, set_train_mode
from cutmix_runner.runtime import Runtime
from cutmix_runner.step import train_step
from cutmix_runner.transforms import Preprocess, random_hflip, random_translate

CPU_FP32 = Runtime(torch.device("cpu"), "fp32")


def _timed(step: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def _random_splits(n: int) -> Splits:
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    return Splits(x, y, x[:1], y[:1], x[:1], y[:1], tuple(str(i) for i in range(10)))


def bench_train(channels_last: bool, unfreeze_blocks: int, batch: int, size: int,
                repeats: int, explicit_padding: bool = True) -> float:
    """Images/s of the run's own training step (step.train_step, built by build.stage_step):
    uint8 batch -> translate, flip -> preprocess -> CutMix -> forward, loss, backward, update."""
    cfg = RunConfig(model=ModelConfig(image_size=size,
                                      explicit_depthwise_padding=explicit_padding),
                    trainer=TrainerConfig(batch_size=batch, channels_last=channels_last))
    stage = StageConfig(unfreeze_blocks=unfreeze_blocks,
                        regularizer=RegularizerConfig(name="cutmix", prob=1.0))
    data = _random_splits(batch)
    model, preprocess = build.model_and_preprocess(cfg, data.num_classes, CPU_FP32.device)
    plan, step = build.stage_step(model, cfg, 0, stage, data, preprocess, CPU_FP32)
    set_train_mode(model, plan)
    g = torch.Generator().manual_seed(0)

    def one_step() -> None:
        for xb, yb in train_batches(data.train_x, data.train_y, batch, g, cfg.data.pad,
                                    cfg.data.hflip):
            train_step(step, xb, yb)

    return batch / _timed(one_step, 2, repeats)


def bench_eval(channels_last: bool, bf16: bool, batch: int, size: int, repeats: int) -> float:
    """Images/s of the evaluation pass (evaluation.predict)."""
    model = build_model(ModelConfig(image_size=size), 10)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    pre = Preprocess(size, (0.5,) * 3, (0.5,) * 3, channels_last)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    runtime = Runtime(torch.device("cpu"), "bf16" if bf16 else "fp32")
    return batch / _timed(lambda: predict(model, x, pre, batch, runtime.autocast), 1, repeats)


def bench_pipeline(batch: int, size: int, repeats: int) -> float:
    """uint8 batch -> translate, flip, resize, normalise, CutMix: ms per batch."""
    pre = Preprocess(size, (0.5,) * 3, (0.5,) * 3, True)
    mixer = CutMix(10, prob=1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (batch,))
    return 1000 * _timed(lambda: mixer(pre(random_hflip(random_translate(x, 4, g), g)), y), 2,
                         repeats * 5)


def _cpu() -> str:
    """The CPU's model name and the vector/matrix extensions that decide fp32 and bf16 speed."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines()
                      if line.startswith("flags")), []))
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(isa) or 'no AVX2'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    b, s, r = args.batch, args.size, args.repeats

    rows = []
    base = bench_train(False, -1, b, s, r)
    rows.append(("train, all blocks, contiguous", base, 1.0))
    for unfreeze, label in ((-1, "all blocks"), (5, "top 5 blocks"), (3, "top 3 blocks"),
                            (1, "head + last block"), (0, "head only")):
        ips = bench_train(True, unfreeze, b, s, r)
        rows.append((f"train, {label}, channels_last", ips, ips / base))
    # Side by side: the depthwise-padding fix (model.py) on and off, everything else equal.
    for unfreeze, label in ((-1, "all blocks"), (5, "top 5 blocks"), (3, "top 3 blocks")):
        builtin = bench_train(True, unfreeze, b, s, r, explicit_padding=False)
        explicit = bench_train(True, unfreeze, b, s, r, explicit_padding=True)
        rows.append((f"train, {label}, channels_last, conv-internal padding", builtin, 1.0))
        rows.append((f"train, {label}, channels_last, explicit depthwise padding", explicit,
                     explicit / builtin))
    eval_base = bench_eval(False, False, b, s, r)
    rows.append(("eval fp32, contiguous", eval_base, 1.0))
    for cl, bf, label in ((True, False, "eval fp32, channels_last"),
                          (True, True, "eval bf16 autocast, channels_last")):
        ips = bench_eval(cl, bf, b, s, r)
        rows.append((label, ips, ips / eval_base))
    pipeline_ms = bench_pipeline(b, s, r)

    command = f"python scripts/bench_throughput.py --batch {b} --size {s} --repeats {r}"
    lines = [
        "# Benchmarks",
        "",
        f"Made by `{command}` (or `make bench`) on {_cpu()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, tf_efficientnet_lite0 at {s} px, batch {b}.",
        "Training rows time the run's own `step.train_step` (built by `build.stage_step`, fed "
        "by `data.train_batches`, CutMix on every batch); eval rows time `evaluation.predict`.",
        "Ratios compare rows of the same block, measured in the same run; absolute numbers "
        "vary with the host.",
        "",
        "| setting | images/s | ratio |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {ips:.0f} | {ratio:.2f} |" for name, ips, ratio in rows]
    lines += ["", f"Batch pipeline (translate, flip, resize, normalise, CutMix): "
              f"{pipeline_ms:.1f} ms per batch of {b}.", ""]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
