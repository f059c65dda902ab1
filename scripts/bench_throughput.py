"""Training and evaluation throughput, measured side by side in one process.

Three ways to feed the same training step (same model, freezing, optimizer, CutMix on every
batch), for the head-only, top-3, top-5 and all-blocks settings:
  ours      - the run's pipeline: whole-dataset uint8 tensor, batched augmentation
              (data.train_batches) and the run's own step (step.train_step);
  standard  - what a user would otherwise write: a torchvision Dataset over PIL images
              (RandomCrop(32, padding=4), RandomHorizontalFlip, Resize, ToTensor, Normalize),
              a DataLoader with 2 workers, and timm's Mixup in CutMix mode;
  model     - the model-only bound: the same forward, loss, backward and update on a batch that
              is already preprocessed and mixed.
Then the settings behind the run's defaults (memory format, depthwise padding, bf16, compile,
the weights' moving average), and where a Stage-2 step's time goes, operator by operator.

Absolute images/s vary with the host; the ratios between rows measured in the same run are what
to compare. Replaces the "CPU benchmark" section of --out (or appends a dated section with
--append), keeping everything else in the file.

    python scripts/bench_throughput.py --out docs/benchmarks.md
    python scripts/bench_throughput.py --device cuda --sizes 64 224 --batches 128 512 --append
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import functools
import itertools
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from cutmix_runner import build
from cutmix_runner.composition import compose_train
from cutmix_runner.config import ModelConfig, RegularizerConfig, RunConfig, StageConfig
from cutmix_runner.data import Splits, train_batches
from cutmix_runner.evaluation import predict
from cutmix_runner.mixing import Regularizer
from cutmix_runner.model import set_train_mode
from cutmix_runner.runtime import Runtime, cpu_flags, keep_freed_memory
from cutmix_runner.step import NonFiniteLoss, TrainStep, train_step
from cutmix_runner.validation import validate

SETTINGS = {"head only": 0, "top 3 blocks": 3, "top 5 blocks": 5, "all blocks": -1}
TARGETS = {"head only": 1.5, "top 3 blocks": 1.1}  # ours / standard, from issue 11
MODEL_ONLY_TARGET = 0.9  # ours / model-only
BEGIN, END = "<!-- bench:cpu -->", "<!-- /bench:cpu -->"


@functools.cache
def study_recipe() -> RunConfig:
    """The study's recipe (experiment=cutmix_staged, trainer=default), composed once."""
    return validate(compose_train(["experiment=cutmix_staged"]))


@dataclass
class Bench:
    """What every measurement shares: where, at which size and batch, for how many steps."""

    runtime: Runtime
    size: int
    batch: int
    repeats: int
    model: ModelConfig
    warmup: int = 2

    def config(self, channels_last: bool = True, explicit_padding: bool | None = None,
               compile: bool = False, ema_decay: float | None = None) -> RunConfig:
        """The study's recipe (trainer=default: fp32 frozen modules) at the bench's model, size,
        batch and layout."""
        cfg = copy.deepcopy(study_recipe())
        cfg.model = dataclasses.replace(self.model, image_size=self.size,
                                        explicit_depthwise_padding=explicit_padding)
        cfg.trainer = dataclasses.replace(cfg.trainer, batch_size=self.batch,
                                          channels_last=channels_last, compile=compile,
                                          ema_decay=ema_decay)
        return cfg

    def timed(self, step: Callable[[], object]) -> float:
        """Images/s of `step` (one batch), after warm-up, waiting for the device at both ends."""
        for _ in range(self.warmup):
            step()
        self.sync()
        start = time.perf_counter()
        for _ in range(self.repeats):
            step()
        self.sync()
        return self.batch * self.repeats / (time.perf_counter() - start)

    def sync(self) -> None:
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize()

    @property
    def images(self) -> int:
        return self.batch * (self.warmup + self.repeats)


def random_splits(n: int, device: torch.device) -> Splits:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Splits(x, y, x[:1], y[:1], x[:1], y[:1], tuple(str(i) for i in range(10))).to(device)


def stage_step(bench: Bench, unfreeze: int, cfg: RunConfig | None = None,
               data: Splits | None = None) -> tuple[TrainStep, Splits, RunConfig]:
    """The run's own step for a stage training `unfreeze` blocks with CutMix on every batch."""
    cfg = cfg or bench.config()
    data = data or random_splits(bench.images, bench.runtime.device)
    stage = StageConfig(epochs=1, unfreeze_blocks=unfreeze, lr_head=1e-3, lr_backbone=1e-4,
                        regularizer=RegularizerConfig(name="cutmix", prob=1.0))
    model, preprocess = build.model_and_preprocess(cfg, data.num_classes, bench.runtime.device)
    plan, step = build.stage_step(model, cfg, 0, stage, data, preprocess, bench.runtime)
    set_train_mode(model, plan)
    return step, data, cfg


def cycle(batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
          ) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """next() over epochs of `batches()`, restarting when one ends."""
    state: dict[str, Iterator] = {"it": batches()}

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = batches()
            return next(state["it"])
    return next_batch


def ours_step(bench: Bench, unfreeze: int, **config: bool | float | None
              ) -> Callable[[], object]:
    """One training step of the run's pipeline, as a call: uint8 batch -> translate, flip ->
    preprocess -> CutMix -> forward, loss, backward, update (-> the weights' moving average,
    under trainer.ema_decay)."""
    step, data, cfg = stage_step(bench, unfreeze, bench.config(**config))
    ema = build.weight_average(step.model, cfg)
    g = torch.Generator().manual_seed(0)
    next_batch = cycle(lambda: train_batches(data.train_x, data.train_y, bench.batch, g,
                                             cfg.data.pad, cfg.data.hflip))
    count = itertools.count(1)

    def one_step() -> None:
        train_step(step, *next_batch())
        if ema is not None:
            ema.update(step.model, step=next(count))
    return one_step


def ours(bench: Bench, unfreeze: int, **config: bool | float | None) -> float:
    """Images/s of the run's own training step (`ours_step`)."""
    return bench.timed(ours_step(bench, unfreeze, **config))


def compiled(bench: Bench, unfreeze: int) -> tuple[float, float]:
    """trainer.compile: images/s after the compile, and the seconds of the first (compiling)
    step, which a run pays once per stage."""
    one_step = ours_step(bench, unfreeze, compile=True)
    start = time.perf_counter()
    one_step()
    first = time.perf_counter() - start
    return bench.timed(one_step), first


class PILImages(torch.utils.data.Dataset):
    """CIFAR-style images as PIL, one per __getitem__, through torchvision transforms."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable) -> None:
        self.x = x.permute(0, 2, 3, 1).cpu().numpy()
        self.y = y.cpu().numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def standard(bench: Bench, unfreeze: int) -> float:
    """The same model, optimizer and schedule fed by DataLoader workers and timm's Mixup."""
    step, data, _ = stage_step(bench, unfreeze)
    mean = tuple(float(m) / 255 for m in step.preprocess.mean.flatten())
    std = tuple(float(s) / 255 for s in step.preprocess.std.flatten())
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                           T.Resize(bench.size), T.ToTensor(), T.Normalize(mean, std)])
    cuda = bench.runtime.device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        PILImages(data.train_x, data.train_y, transform), batch_size=bench.batch, shuffle=True,
        num_workers=2, drop_last=True, persistent_workers=True, pin_memory=cuda)
    # label_smoothing=0 on purpose: timm's default (0.1) would smooth silently.
    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0,
                  num_classes=10)
    criterion = SoftTargetCrossEntropy()
    next_batch = cycle(lambda: iter(loader))
    memory_format = step.preprocess.memory_format

    def one_step() -> None:
        x, y = next_batch()
        x = x.to(bench.runtime.device, non_blocking=True, memory_format=memory_format)
        x, target = mixup(x, y.to(bench.runtime.device, non_blocking=True))
        with step.autocast():
            logits = step.model(x)
        loss = criterion(logits.float(), target)
        step.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step.optimizer.step()
        step.scheduler.step()

    return bench.timed(one_step)


def model_only(bench: Bench, unfreeze: int) -> float:
    """The run's step on one batch that is already preprocessed (float, model size) and needs no
    mixing: forward, loss, backward, update, nothing else."""
    step, data, _ = stage_step(bench, unfreeze)
    images = step.preprocess(data.train_x[:bench.batch])
    labels = data.train_y[:bench.batch]
    step.preprocess = lambda x: x
    step.regularizer = Regularizer(10, prob=0.0)
    return bench.timed(lambda: train_step(step, images, labels))


def three_way(bench: Bench) -> list[str]:
    rows = []
    for name, unfreeze in SETTINGS.items():
        o, s, m = ours(bench, unfreeze), standard(bench, unfreeze), model_only(bench, unfreeze)
        rows.append(f"| {bench.size} px, batch {bench.batch}, {name} | {o:.0f} | {s:.0f} | "
                    f"{m:.0f} | **{o / s:.2f}**{_target(o / s, TARGETS.get(name))} | "
                    f"**{o / m:.2f}**{_target(o / m, MODEL_ONLY_TARGET)} |")
    return rows


def _target(ratio: float, target: float | None) -> str:
    if target is None:
        return ""
    return f" (target ≥ {target}: {'met' if ratio >= target else 'missed'})"


def eval_speed(bench: Bench, precision: str, batch: int | None = None) -> float:
    """Images/s of evaluation.predict over 4 batches of `batch` (default: the bench's)."""
    step, data, _ = stage_step(bench, 0)
    step.model.eval()
    runtime = Runtime(bench.runtime.device, precision)
    batch = batch or bench.batch
    x = data.train_x[:4 * batch] if len(data.train_x) >= 4 * batch else data.train_x
    run = Bench(bench.runtime, bench.size, len(x), bench.repeats, bench.model, warmup=1)
    return run.timed(lambda: predict(step.model, x, step.preprocess, batch, runtime.autocast))


def settings(bench: Bench) -> list[str]:
    """Each default the run picks by measurement, on and off, side by side."""
    rows = []
    contiguous = ours(bench, -1, channels_last=False)
    cl = ours(bench, -1)
    rows.append(f"| all blocks: channels_last vs contiguous | {cl:.0f} | {contiguous:.0f} | "
                f"{cl / contiguous:.2f} |")
    for name in ("top 3 blocks", "top 5 blocks", "all blocks"):
        explicit = ours(bench, SETTINGS[name], explicit_padding=True)
        builtin = ours(bench, SETTINGS[name], explicit_padding=False)
        rows.append(f"| {name}: explicit depthwise padding vs conv-internal | {explicit:.0f} | "
                    f"{builtin:.0f} | {explicit / builtin:.2f} |")
    device = bench.runtime.device
    # trainer=cpu's batch against trainer=default's, and against half of it (more updates per
    # epoch, if the smaller batch does not run slower per image). Each pair is timed back to
    # back, so `this` is measured again for each `other`: this host drifts between rows.
    for other in (128 if bench.batch != 128 else 64, bench.batch // 2):
        for name in ("head only", "top 3 blocks", "top 5 blocks"):
            this = ours(bench, SETTINGS[name])
            that = ours(dataclasses.replace(bench, batch=other), SETTINGS[name])
            rows.append(f"| {name}: batch {bench.batch} vs {other} | {this:.0f} | {that:.0f} | "
                        f"{this / that:.2f} |")
    # Training resolution (schedule.stages.NAME.image_size): the smaller sizes for the early,
    # head and Stage-2, epochs of progressive resizing, the larger ones for the late stage. With
    # TF "same" padding the stride-32 maps are 3 x 3 from 65 to 96 px and 4 x 4 from 97 px.
    for unfreeze, name, sizes in ((1, "head + last block", (56, 64)),
                                  (5, "top 5 blocks", (64, 88, 96, 104, 112))):
        for size in sizes:
            this = ours(bench, unfreeze)
            that = ours(dataclasses.replace(bench, size=size), unfreeze)
            rows.append(f"| {name}: {size} px vs {bench.size} px | {that:.0f} | {this:.0f} | "
                        f"{that / this:.2f} |")
    for unfreeze, name in ((1, "head + last block"), (3, "top 3 blocks"), (4, "top 4 blocks")):
        fp32 = ours(bench, unfreeze)
        bf16 = ours(dataclasses.replace(bench, runtime=Runtime(device, "bf16")), unfreeze)
        frozen = ours(dataclasses.replace(bench, runtime=Runtime(device, "fp32", "", "bf16")),
                      unfreeze)
        rows.append(f"| {name}: train bf16 autocast vs fp32 | {bf16:.0f} | {fp32:.0f} | "
                    f"{bf16 / fp32:.2f} |")
        rows.append(f"| {name}: frozen modules in bf16 vs fp32 | {frozen:.0f} | {fp32:.0f} | "
                    f"{frozen / fp32:.2f} |")
    eager = ours(bench, SETTINGS["top 5 blocks"])
    try:
        fast, first = compiled(bench, SETTINGS["top 5 blocks"])
        rows.append(f"| top 5 blocks: torch.compile (inductor) vs eager; the first step compiled "
                    f"for {first:.0f} s | {fast:.0f} | {eager:.0f} | {fast / eager:.2f} |")
    except NonFiniteLoss:  # seen under `make bench-avx2`: a row, not the loss of the whole bench
        rows.append(f"| top 5 blocks: torch.compile (inductor) vs eager: **the compiled step's "
                    f"loss was not finite** (eager's was) | – | {eager:.0f} | – |")
    averaged = ours(bench, SETTINGS["top 5 blocks"], ema_decay=0.998)
    rows.append(f"| top 5 blocks: a moving average of the weights (trainer.ema_decay) vs none "
                f"| {averaged:.0f} | {eager:.0f} | {averaged / eager:.2f} |")
    fp32, bf16 = eval_speed(bench, "fp32"), eval_speed(bench, "bf16")
    rows.append(f"| eval: bf16 autocast vs fp32 | {bf16:.0f} | {fp32:.0f} | {bf16 / fp32:.2f} |")
    # Around the run's batch (`make study-eval` scores in batches of 32) and beyond it, where
    # batches fall out of a small CPU's cache.
    for batch in (bench.batch // 2, 2 * bench.batch, 4 * bench.batch):
        other = eval_speed(bench, "fp32", batch)
        rows.append(f"| eval fp32: batch {batch} vs {bench.batch} | {other:.0f} | "
                    f"{fp32:.0f} | {other / fp32:.2f} |")
    return rows


CONV_WEIGHT_ARG = {"aten::convolution_backward": 2, "aten::mkldnn_convolution": 1,
                   "aten::convolution": 1, "aten::_convolution": 1}


def conv_kind(key: str, shapes: list) -> str:
    """An operator's name, and for a convolution which kind, from its weight's shape: depthwise
    (C x 1 x k x k) and 1x1 convolutions run different kernels, and an AVX2-only CPU may be slow
    at one of them only."""
    index = CONV_WEIGHT_ARG.get(key)
    if index is None or len(shapes) <= index or len(shapes[index]) != 4:
        return key
    _, per_group, height, _ = shapes[index]
    kind = "depthwise" if per_group == 1 and height > 1 else "1x1" if height == 1 else "dense"
    return f"{key} ({kind})"


def kernel_profile(bench: Bench, unfreeze: int, top: int = 10) -> list[str]:
    """Where a training step's time goes: the operators with the most self time (torch.profiler),
    per step, convolutions split by kind, and the ISA torch dispatches its own CPU kernels to
    (oneDNN, which runs the convolutions, picks its own)."""
    one_step = ours_step(bench, unfreeze)
    for _ in range(bench.warmup):
        one_step()
    steps = max(3, bench.repeats // 4)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        for _ in range(steps):
            one_step()
        bench.sync()
    self_us: dict[str, float] = {}
    calls: dict[str, int] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        name = conv_kind(event.key, event.input_shapes)
        self_us[name] = self_us.get(name, 0.0) + event.self_cpu_time_total
        calls[name] = calls.get(name, 0) + event.count
    total = sum(self_us.values())
    stage = next(k for k, v in SETTINGS.items() if v == unfreeze)
    rows = [f"Where one training step's time goes, {bench.size} px, batch {bench.batch}, {stage} "
            f"(torch.profiler over {steps} steps, self CPU time; torch's CPU capability: "
            f"{torch.backends.cpu.get_cpu_capability()}):", "",
            "| operator | self ms per step | share | calls per step |", "|---|---:|---:|---:|"]
    for name in sorted(self_us, key=self_us.get, reverse=True)[:top]:
        rows.append(f"| `{name}` | {self_us[name] / 1000 / steps:.1f} | "
                    f"{self_us[name] / total:.0%} | {calls[name] // steps} |")
    rows.append(f"| all operators | {total / 1000 / steps:.1f} | 100% | |")
    return rows


# Environment variables that hold torch's own kernels and oneDNN's (the convolutions) to a
# narrower instruction set than the CPU has (`make bench-avx2`).
ISA_HOLDS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def isa_holds() -> str:
    """The variables that hold kernels to an instruction set, as set here ('' when none)."""
    return " ".join(f"{k}={os.environ[k]}" for k in ISA_HOLDS if os.environ.get(k))


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), platform.machine())
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    held = (f"; kernels held by {isa_holds()}, torch's CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}" if isa_holds() else "")
    return (f"{name} ({', '.join(isa) or 'no AVX2'}{held}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def report(args: argparse.Namespace, command: str) -> str:
    device = torch.device(args.device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    model = ModelConfig(name=args.model, weights="none", image_size=None, drop_rate=0.2)
    lines = [f"Made by `{command}` on {machine(device)}, {args.model}, "
             f"{datetime.date.today().isoformat()}.", "",
             "| setting | ours img/s | standard img/s | model-only img/s | ours / standard | "
             "ours / model-only |", "|---|---:|---:|---:|---:|---:|"]
    if device.type == "cpu":
        keep_freed_memory()  # as every run does (trainer.keep_freed_memory=true)
    for size in args.sizes:
        for batch in args.batches:
            bench = Bench(Runtime(device, precision), size, batch, steps(args, batch), model)
            # Untimed: the process's first steps allocate memory and build kernels, which made the
            # first setting measured look far slower than the same setting measured later.
            ours(dataclasses.replace(bench, repeats=2), SETTINGS["head only"])
            lines += three_way(bench)
    if device.type == "cpu":
        bench = Bench(Runtime(device, "fp32"), args.sizes[0], args.batches[0],
                      steps(args, args.batches[0]), model)
        lines += ["", f"Settings at {bench.size} px, batch {bench.batch} (training rows: ours):",
                  "", "| setting | on img/s | off img/s | on / off |", "|---|---:|---:|---:|"]
        lines += settings(bench)
        lines += ["", *kernel_profile(bench, SETTINGS["top 5 blocks"])]
    return "\n".join(lines) + "\n"


def steps(args: argparse.Namespace, batch: int) -> int:
    """Timed steps per measurement: --repeats, or enough for 2,560 images (at least 10), so that a
    small batch is not timed over a fraction of a second, where this host's drift dominates."""
    return args.repeats or max(10, -(-2560 // batch))


def write(out: Path, body: str, append: bool, title: str) -> None:
    """Replace the marked CPU section of `out` (or append a dated one), keep the rest."""
    text = out.read_text() if out.exists() else "# Benchmarks\n\n"
    if append:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n{body}"
    elif BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + BEGIN + "\n" + body + END + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n{BEGIN}\n{body}{END}\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[80],
                        help="input px (80: the default run's until 2026-12-07, kept so that "
                             "tables compare across sessions; the training-resolution rows "
                             "measure 56-112 px against it)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64],
                        help="training batch (64: the default run's, trainer=cpu)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per measurement (default: 2,560 images' worth)")
    parser.add_argument("--model", default="tf_efficientnet_lite0",
                        help="timm name; random weights (speed does not depend on them)")
    parser.add_argument("--append", action="store_true",
                        help="append a dated section instead of replacing the CPU one")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    command = "python scripts/bench_throughput.py " + " ".join(sys.argv[1:])
    body = report(args, command.strip())
    title = ("CPU benchmark (`make bench`)" if not args.append
             else ", ".join([f"{args.device} benchmark", *filter(None, [isa_holds()]),
                             datetime.date.today().isoformat()]))
    write(args.out, body, args.append, title)
    sys.stdout.write(body)


if __name__ == "__main__":
    main()
