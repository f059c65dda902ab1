"""A trained model, ready to use without its dataset: `load_trained(RUN_DIR | CHECKPOINT)`.

Predict, eval and export start here. The checkpoint carries the config it was trained with, so
the backbone, input size, normalisation and class names are rebuilt from it; no data set is read
and no pretrained weights are fetched (the checkpoint holds every weight).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cutmix_runner import checkpoint
from cutmix_runner.config import RunConfig, from_result_config
from cutmix_runner.data import class_names
from cutmix_runner.evaluation import predict
from cutmix_runner.model import build_model, build_preprocess
from cutmix_runner.transforms import Preprocess


@dataclass
class TrainedModel:
    model: nn.Module  # in eval mode
    preprocess: Preprocess  # uint8 (N, 3, H, W) -> the model's normalised input
    classes: tuple[str, ...]
    image_size: int
    config: RunConfig  # as trained (result-neutral keys at their defaults)
    source: Path  # the checkpoint file

    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """float32 logits on the CPU for a uint8 batch of any size."""
        device = next(self.model.parameters()).device
        return predict(self.model, images.to(device), self.preprocess, batch_size,
                       contextlib.nullcontext)


def load_trained(path: Path | str, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of a run directory (its best-validation checkpoint) or of a checkpoint file.

    Raises RunError naming the path when it holds no usable cutmix-runner checkpoint.
    """
    source = checkpoint.find_checkpoint(Path(path))
    state = checkpoint.load(source, context="model")
    config = from_result_config(state.config)
    classes = class_names(config.data)
    # Every weight comes from the checkpoint: build the architecture only.
    architecture = dataclasses.replace(config.model, weights="none")
    model = build_model(architecture, len(classes))
    model.load_state_dict(state.model)
    # The memory format it was trained and evaluated in: the same kernels, the same numbers.
    channels_last = config.trainer.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last
             else torch.contiguous_format).eval()
    preprocess = build_preprocess(model, config.model, channels_last)
    return TrainedModel(model, preprocess, classes, preprocess.image_size, config, source)
