from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from cutmix_runner.mixing import one_hot, soft_target_cross_entropy
from cutmix_runner.model import (
    ModelError,
    PaddedDepthwiseConv2d,
    apply_freeze,
    build_model,
    compute_frozen_in_bf16,
    map_packaged_weights,
    packaged_state_dict,
    pad_depthwise_explicitly,
    plan_freeze,
    set_train_mode,
    split_parts,
)
from cutmix_runner.optim import build_optimizer
from tests.helpers import default_part


@pytest.mark.parametrize("name, tensors", [("tf_efficientnet_lite0", 296),
                                           ("tf_efficientnet_lite1", 386),
                                           ("tf_efficientnet_lite2", 386)])
def test_packaged_weights_load_with_every_tensor_matched(name: str, tensors: int) -> None:
    source = packaged_state_dict(name)
    model = build_model(default_part("model", name=name, weights="packaged"), 10)
    loaded = model.state_dict()
    # Every backbone tensor equals its packaged counterpart, in order; only the classifier is new.
    pairs = list(zip(source.items(), loaded.items(), strict=True))
    assert len(pairs) == len(source) == tensors
    for (src_key, src), (dst_key, dst) in pairs:
        if dst_key.startswith("classifier."):
            assert src.shape[0] == 1000 and dst.shape[0] == 10
            continue
        assert torch.equal(src, dst), (src_key, dst_key)
    assert model.get_classifier().out_features == 10


def test_packaged_mapping_fails_loudly_on_shape_mismatch() -> None:
    source = packaged_state_dict()
    target = timm.create_model("tf_efficientnet_lite1").state_dict()
    with pytest.raises(ModelError, match="does not fit|tensors"):
        map_packaged_weights(source, target)


def test_packaged_weights_refuse_other_backbones() -> None:
    with pytest.raises(ModelError, match="packaged"):
        build_model(default_part("model", name="test_efficientnet", weights="packaged"), 10)


def test_unknown_backbone_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="unknown timm model 'effnet_nope'"):
        build_model(default_part("model", name="effnet_nope", weights="none"), 10)


def test_state_dict_path_weights(tmp_path: Path) -> None:
    donor = build_model(default_part("model", name="test_efficientnet", weights="none"), 10)
    path = tmp_path / "w.pt"
    torch.save(donor.state_dict(), path)
    model = build_model(default_part("model", name="test_efficientnet", weights=str(path)), 10)
    assert torch.equal(model.conv_stem.weight, donor.conv_stem.weight)
    with pytest.raises(ModelError, match="do not fit"):
        build_model(default_part("model", name="test_resnet", weights=str(path)), 10)


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "test_convnext"])
def test_split_parts_finds_blocks(name: str) -> None:
    model = timm.create_model(name, num_classes=10)
    parts = split_parts(model)
    assert parts.blocks and parts.stem
    assert model.get_classifier() in [m for h in parts.head for m in h.modules()]
    with pytest.raises(ModelError, match="has only"):
        plan_freeze(model, len(parts.blocks) + 1)


def _train_a_few_steps(model: torch.nn.Module, unfreeze_blocks: int) -> None:
    plan = plan_freeze(model, unfreeze_blocks)
    apply_freeze(model, plan)
    stage = default_part("late", unfreeze_blocks=unfreeze_blocks, lr_head=1e-2,
                         lr_backbone=1e-2)
    opt = build_optimizer(model, plan, stage, default_part("optim"), 128)
    torch.manual_seed(0)
    for _ in range(3):
        set_train_mode(model, plan)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        loss = soft_target_cross_entropy(model(x), one_hot(y, 10))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_frozen_parameters_stay_bit_identical_and_unfrozen_change() -> None:
    model = timm.create_model("test_efficientnet", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_blocks = len(model.blocks)
    _train_a_few_steps(model, unfreeze_blocks=2)
    after = model.state_dict()
    top = tuple(f"blocks.{i}." for i in range(n_blocks - 2, n_blocks))
    for key, value in after.items():
        frozen = key.startswith(("conv_stem", "bn1")) or (
            key.startswith("blocks.") and not key.startswith(top))
        if frozen:
            # Weights and BatchNorm running statistics: bit-identical.
            assert torch.equal(value, before[key]), key
        elif key.endswith((".weight",)) and "bn" not in key:
            assert not torch.equal(value, before[key]), key


def test_head_only_freezes_every_block_and_trains_classifier() -> None:
    model = timm.create_model("test_efficientnet", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_a_few_steps(model, unfreeze_blocks=0)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("blocks."))
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])
    assert not torch.equal(after["conv_head.weight"], before["conv_head.weight"])


def test_explicit_depthwise_padding_gives_the_same_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    for kernel, size in ((5, 2), (3, 2), (5, 4), (3, 9)):
        builtin = torch.nn.Conv2d(6, 6, kernel, padding=kernel // 2, groups=6)
        padded = torch.nn.Conv2d(6, 6, kernel, padding=kernel // 2, groups=6)
        padded.load_state_dict(builtin.state_dict())
        assert pad_depthwise_explicitly(padded) == 1
        assert isinstance(padded, PaddedDepthwiseConv2d)
        x = torch.randn(3, 6, size, size, requires_grad=True)
        x2 = x.detach().clone().requires_grad_()
        y1, y2 = builtin(x), padded(x2)
        torch.testing.assert_close(y2, y1)
        y1.square().sum().backward()
        y2.square().sum().backward()
        torch.testing.assert_close(padded.weight.grad, builtin.weight.grad)
        torch.testing.assert_close(padded.bias.grad, builtin.bias.grad)
        torch.testing.assert_close(x2.grad, x.grad)


def test_explicit_padding_swaps_only_plain_depthwise_convs() -> None:
    model = build_model(default_part("model", name="tf_efficientnet_lite0", weights="none",
                                    explicit_depthwise_padding=True), 10)
    keys = list(model.state_dict())
    swapped = [m for m in model.modules() if isinstance(m, PaddedDepthwiseConv2d)]
    # lite0 has 16 depthwise convs; the 4 with stride 2 use timm's own dynamic "same" padding.
    assert len(swapped) == 12
    assert all(m.groups == m.in_channels and m.stride == (1, 1) for m in swapped)
    off = build_model(default_part("model", name="tf_efficientnet_lite0", weights="none",
                                  explicit_depthwise_padding=False), 10)
    assert not any(isinstance(m, PaddedDepthwiseConv2d) for m in off.modules())
    assert list(off.state_dict()) == keys


def test_frozen_modules_compute_in_bf16_only_while_training_and_can_be_undone() -> None:
    model = build_model(default_part("model", name="test_efficientnet", weights="none",
                                     image_size=32), 10)
    plan = plan_freeze(model, 1)
    apply_freeze(model, plan)
    inner = next(m for m in plan.frozen[-1].modules() if isinstance(m, torch.nn.Conv2d))
    dtypes: list[torch.dtype] = []
    inner.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    x = torch.randn(2, 3, 32, 32)
    compute_frozen_in_bf16(model, plan, "cpu", enabled=True)
    set_train_mode(model, plan)
    logits = model(x)
    with torch.no_grad():
        model(x)  # evaluation: the eval precision decides, not this switch
    compute_frozen_in_bf16(model, plan, "cpu", enabled=False)
    model(x)
    assert dtypes == [torch.bfloat16, torch.float32, torch.float32]
    assert logits.dtype == torch.float32 and logits.requires_grad
    assert "forward" not in vars(plan.frozen[-1])
