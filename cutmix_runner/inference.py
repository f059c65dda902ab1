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
import yaml
from torch import nn

from cutmix_runner import __version__, checkpoint
from cutmix_runner.config import RunConfig
from cutmix_runner.data import Splits, build_splits, class_names
from cutmix_runner.errors import ConfigError, DataError, RunError
from cutmix_runner.evaluation import predict
from cutmix_runner.model import build_model, build_preprocess
from cutmix_runner.rundir import RunDir, Summary
from cutmix_runner.transforms import Preprocess
from cutmix_runner.validation import from_result_config


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


def load_trained(path: Path | str, device: str | torch.device = "cpu",
                 explicit_depthwise_padding: bool | None = None) -> TrainedModel:
    """The model of a run directory (its best-validation checkpoint) or of a checkpoint file.

    `explicit_depthwise_padding` overrides the trained setting (same weights, same numbers; an
    export wants plain convs). Raises RunError naming the path when it holds no usable
    cutmix-runner checkpoint.
    """
    source = checkpoint.find_checkpoint(Path(path))
    state = checkpoint.load(source, context="model")
    try:
        config = from_result_config(state.config)
    except ConfigError as exc:  # e.g. a key a newer version added
        raise RunError(f"{source}: its config does not fit this cutmix-runner "
                       f"{__version__} ({exc}); was it written by another version?") from None
    classes = class_names(config.data)
    # Every weight comes from the checkpoint: build the architecture only.
    architecture = dataclasses.replace(config.model, weights="none")
    if explicit_depthwise_padding is not None:
        architecture.explicit_depthwise_padding = explicit_depthwise_padding
    model = build_model(architecture, len(classes))
    check_weights_fit(model, state.model, source)
    model.load_state_dict(state.model)
    # The memory format it was trained and evaluated in: the same kernels, the same numbers.
    channels_last = config.trainer.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last
             else torch.contiguous_format).eval()
    preprocess = build_preprocess(model, config.model, channels_last)
    return TrainedModel(model, preprocess, classes, preprocess.image_size, config, source)


def check_weights_fit(model: nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """The checkpoint's tensors are exactly the model's, name for name and shape for shape; else
    one line naming the first that is missing, extra or of another shape."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in weights:
            raise RunError(f"{source}: its weights do not fit the model: no tensor '{name}'")
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise RunError(f"{source}: its weights do not fit the model: '{name}' has shape "
                           f"{tuple(weights[name].shape)}, the model {tuple(tensor.shape)}")
    extra = next((name for name in weights if name not in expected), None)
    if extra is not None:
        raise RunError(f"{source}: its weights do not fit the model: '{extra}' is not one of "
                       "its tensors")


def run_summary(source: Path) -> Summary | None:
    """summary.json of the run that holds checkpoint `source`, if the run finished."""
    return RunDir.of(source).read_summary()


def load_test_set(trained: TrainedModel, path: Path | str,
                  data_root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's test set (uint8 images, labels), all of it, for checks on a trained model."""
    splits = trained_splits(trained, path, data_root)
    return splits.test_x, splits.test_y


def trained_splits(trained: TrainedModel, path: Path | str,
                   data_root: str | None = None) -> Splits:
    """The run's splits as it trained on them (its validation split included), with the whole
    test set.

    The data set's location is not part of a checkpoint (it does not change results): it comes
    from `data_root`, else from the run directory's .hydra/config.yaml, else the default.
    """
    # The whole test set, even for a run scored on data.test_subset: the tools' checks, and
    # the released CIFAR-10-C files, which follow the test set image by image.
    cfg = dataclasses.replace(trained.config.data, test_subset=None)
    root = data_root or _trained_data_root(checkpoint.find_checkpoint(Path(path)))
    if root is not None:
        cfg = dataclasses.replace(cfg, root=root)
    try:
        return build_splits(cfg)
    except DataError as exc:
        raise DataError(f"{exc} (the run's test images are needed; pass --data-root)") from exc


def _trained_data_root(source: Path) -> str | None:
    hydra_config = RunDir.of(source).config_file
    if not hydra_config.exists():
        return None
    saved = yaml.safe_load(hydra_config.read_text()) or {}
    return (saved.get("data") or {}).get("root")
