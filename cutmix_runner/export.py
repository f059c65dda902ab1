"""`cutmix-export RUN_DIR`: an ONNX model that takes the images users have, verified.

The graph takes uint8 RGB batches of N x 3 x 32 x 32 (N is dynamic) and does the resize and the
normalisation itself, so a caller needs no torch and no knowledge of the training input size.
The TF-ported EfficientNets pad their stride-2 convs "same" from the input's shape at run time;
that shape is fixed once the resize is inside the graph, so the pads are frozen to constants
first (`freeze_same_padding`) and the exported graph holds no Shape/Gather arithmetic.

The export is checked in the same command: onnxruntime and torch score the same test images,
and the command fails unless top-1 agreement is at least 99.9 % and the largest logit
difference at most 1e-3. A Markdown model card is written next to the model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cutmix_runner.artifacts import check_output, new_folder
from cutmix_runner.errors import UserError
from cutmix_runner.inference import TrainedModel, load_test_set, load_trained, run_summary
from cutmix_runner.rundir import RunDir, Summary

INPUT_SIZE = 32  # CIFAR's own resolution: what the exported graph takes
MIN_AGREEMENT, MAX_LOGIT_DIFF = 0.999, 1e-3


class StaticSamePadConv2d(nn.Conv2d):
    """A conv with TF "same" padding frozen to the constant pads of one input size."""

    static_pad: tuple[int, int, int, int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.static_pad), self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


def freeze_same_padding(model: nn.Module, image_size: int) -> int:
    """Swap timm's dynamic-"same" convs for constant-padded ones at `image_size`; returns how
    many were swapped. Same weights, same numbers, at that input size only."""
    from timm.layers import Conv2dSame
    from timm.layers.padding import get_same_padding

    sizes: dict[nn.Module, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: sizes.__setitem__(m, args[0].shape[-2:]))
             for m in model.modules() if type(m) is Conv2dSame]
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    for module, (height, width) in sizes.items():
        (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
        pad_h = get_same_padding(height, kh, sh, dh)  # what Conv2dSame computes at run time
        pad_w = get_same_padding(width, kw, sw, dw)
        module.__class__ = StaticSamePadConv2d
        module.static_pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    return len(sizes)


class ImageClassifier(nn.Module):
    """uint8 (N, 3, 32, 32) RGB -> logits: the trained model behind its own preprocessing."""

    def __init__(self, trained: TrainedModel) -> None:
        super().__init__()
        self.model = trained.model
        self.image_size = trained.image_size
        self.resize = trained.image_size != INPUT_SIZE  # known now: no shape test in the graph
        self.register_buffer("mean", trained.preprocess.mean.clone())  # 0-255 scale
        self.register_buffer("std", trained.preprocess.std.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.resize:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return self.model((x - self.mean) / self.std)


def exportable(path: Path) -> tuple[ImageClassifier, TrainedModel]:
    """The run's model in fp32 on the CPU, contiguous, with static padding, wrapped."""
    trained = load_trained(path, device="cpu", explicit_depthwise_padding=False)
    trained.model.to(memory_format=torch.contiguous_format)
    freeze_same_padding(trained.model, trained.image_size)
    return ImageClassifier(trained).eval(), trained


def metadata(trained: TrainedModel, summary: Summary | None) -> dict[str, str]:
    data = {"classes": json.dumps(list(trained.classes)), "input": "uint8 RGB, N x 3 x 32 x 32",
            "backbone": trained.config.model.name, "source": str(trained.source)}
    if summary:
        data["test_accuracy"] = f"{summary['test_accuracy']:.4f}"
        data["test_protocol"] = summary["test_protocol"]
        data["test_accuracy_single_view"] = f"{summary['test_accuracy_single_view']:.4f}"
    return data


def export_onnx(wrapper: ImageClassifier, output: Path, meta: dict[str, str]) -> None:
    """Write the ONNX model to `output` (metadata added, onnx.checker passed)."""
    import onnx

    tmp = output.with_name(f".{output.name}.tmp")
    example = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)
    # torch.export-based exporter: with the pads frozen, it folds each pad into its Conv and
    # leaves one Shape op, for the dynamic batch; the TorchScript exporter leaves dozens.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(wrapper, (example,), str(tmp), dynamo=True, external_data=False,
                          input_names=["images"], output_names=["logits"],
                          dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                          opset_version=18, optimize=True, verbose=False)
    model = onnx.load(str(tmp))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(output)


@dataclass
class Verification:
    images: int
    max_logit_diff: float
    agreement: float
    onnx_images_per_second: float
    torch_images_per_second: float

    @property
    def passed(self) -> bool:
        return self.agreement >= MIN_AGREEMENT and self.max_logit_diff <= MAX_LOGIT_DIFF


def verify(output: Path, wrapper: ImageClassifier, images: torch.Tensor,
           batch_size: int = 256) -> Verification:
    """Score `images` with onnxruntime and with torch; compare logits and top-1."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    batches = list(images.split(batch_size))
    with torch.no_grad():  # one warm-up batch each, so that the timings compare steady states
        session.run(None, {"images": batches[0].numpy()})
        wrapper(batches[0])
    start = time.perf_counter()
    ours = torch.cat([torch.from_numpy(session.run(None, {"images": b.numpy()})[0])
                      for b in batches])
    onnx_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        reference = torch.cat([wrapper(b) for b in batches])
    torch_seconds = time.perf_counter() - start
    agreement = (ours.argmax(-1) == reference.argmax(-1)).float().mean().item()
    return Verification(len(images), (ours - reference).abs().max().item(), agreement,
                        len(images) / onnx_seconds, len(images) / torch_seconds)


def model_card(trained: TrainedModel, summary: Summary | None, output: Path,
               check: Verification) -> str:
    cfg = trained.config
    stages = "\n".join(
        f"| {name} | {s.epochs} | {s.unfreeze_blocks} | {s.lr_head:g} / {s.lr_backbone:g} | "
        f"{s.regularizer.name} (p {s.regularizer.prob:g}, area {s.regularizer.min_area:g}–"
        f"{s.regularizer.max_area:g}) |" for name, s in cfg.schedule.stages.items())
    scores = "not known (no summary.json next to the checkpoint)"
    if summary:
        scores = (f"{100 * summary['test_accuracy']:.2f} % ({summary['test_protocol']}), "
                  f"{100 * summary['test_accuracy_single_view']:.2f} % single view; test ECE "
                  f"{100 * summary['test']['ece']:.2f} % (15 bins, single view)")
    return f"""# Model card: {output.name}

- **Backbone:** `{cfg.model.name}`, weights `{cfg.model.weights}`, input resized to
  {trained.image_size} px inside the graph, dropout {cfg.model.drop_rate:g}.
- **Trained on:** `{cfg.data.name}` ({cfg.data.val_size} images held out for validation,
  train subset: {cfg.data.train_subset or 'all'}), seed {cfg.trainer.seed}, from
  `{trained.source}`.
- **Test accuracy:** {scores}.
- **Classes (logit order):** {', '.join(trained.classes)}.

## Recipe

| stage | epochs | unfrozen blocks (-1 = all) | LR head / backbone | regularizer |
|---|---:|---:|---|---|
{stages}

## Inputs and outputs

- Input `images`: uint8 RGB, shape N x 3 x {INPUT_SIZE} x {INPUT_SIZE} (channels first, values
  0–255, N any). Resize and normalisation happen inside the graph; do not normalise.
- Output `logits`: float32, N x {len(trained.classes)}; softmax gives probabilities.
- Metadata (`metadata_props`): classes, input, backbone, source, test accuracy.

## Verification (onnxruntime against torch, fp32, CPU)

{check.images} test images: top-1 agreement {100 * check.agreement:.2f} %, largest logit
difference {check.max_logit_diff:.2e} (limits: at least {100 * MIN_AGREEMENT:.1f} %, at most
{MAX_LOGIT_DIFF:g}). onnxruntime {check.onnx_images_per_second:.0f} images/s, torch
{check.torch_images_per_second:.0f} images/s (the exported module: fp32, contiguous memory
format), batch 256, on the exporting machine's CPU.

## Known limits

- It knows {len(trained.classes)} classes and nothing else: every image gets one of them, with
  no "none of these".
- It was trained on 32 x 32 images. A photo must first be brought to 32 x 32 the way CIFAR
  images were made (`cutmix-predict` does this: centre crop, antialiased downscale); a
  plain stretch of a large photo loses accuracy.
- Accuracy falls under noise, blur and other corruptions: `cutmix-eval` measures how much.
- Probabilities are not calibrated by a temperature; see the run's ECE above.
"""


def run(args: argparse.Namespace) -> int:
    """Export, check, and write the model and its card; exit code 1 when the check failed."""
    if args.images < 256:
        raise UserError(f"--images {args.images}: verify on at least 256 test images")
    source = args.run
    output = args.out or RunDir.of(source).export_file
    card = output.with_name(output.stem + "_card.md")
    for path in (output, card):
        check_output(path, args.force)
    wrapper, trained = exportable(source)
    images = load_test_set(trained, source, args.data_root)[0][:args.images]
    summary = run_summary(trained.source)
    # Export beside the target and check there: a model that fails its check never replaces
    # one that passed; it stays as NAME.failed.onnx for inspection.
    candidate = output.with_name(output.stem + ".candidate.onnx")
    # An error or Ctrl-C leaves no half-made candidate behind, nor the folder made for it.
    with new_folder(output.parent):
        try:
            export_onnx(wrapper, candidate, metadata(trained, summary))
            check = verify(candidate, wrapper, images)
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
    if check.passed:
        candidate.replace(output)
        card.write_text(model_card(trained, summary, output, check))
        where = f"{output} ({output.stat().st_size / 2**20:.1f} MiB), card {card}"
    else:
        failed = candidate.replace(output.with_name(output.stem + ".failed.onnx"))
        where = f"{failed}: the check FAILED, {output} was not written"
    print(f"cutmix-export: {where}\n"
          f"  check on {check.images} test images: top-1 agreement {100 * check.agreement:.2f} %, "
          f"max |logit difference| {check.max_logit_diff:.2e} (limits {100 * MIN_AGREEMENT:.1f} %, "
          f"{MAX_LOGIT_DIFF:g})\n"
          f"  onnxruntime {check.onnx_images_per_second:.0f} images/s, torch "
          f"{check.torch_images_per_second:.0f} images/s (CPU, batch 256; torch runs the "
          "exported module: fp32, contiguous)", file=sys.stderr)
    return 0 if check.passed else 1
