"""`cutmix-export`: a static ONNX graph for uint8 images, metadata, a model card, and the
onnxruntime check that is part of the command."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cutmix_runner import export
from cutmix_runner.inference import TrainedModel
from cutmix_runner.model import build_model, build_preprocess
from tests.helpers import ToolResult, default_part, run_tool

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _export(*args: str) -> ToolResult:
    return run_tool("export", *args)


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("export") / "model.onnx"
    result = _export(str(trained_run), "--output", str(output), "--images", "256")
    assert result.returncode == 0, result.stderr
    assert "top-1 agreement 100.00 %" in result.stderr and "FAILED" not in result.stderr
    return output


def test_the_graph_takes_uint8_batches_of_any_size(exported: Path, trained_run: Path) -> None:
    model = onnx.load(str(exported))
    (inp,) = model.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["classes"].startswith('["class_0"') and float(meta["test_accuracy"]) > 0.9
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        images = np.random.default_rng(n).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        assert session.run(None, {"images": images})[0].shape == (n, 10)
    card = exported.with_name("model_card.md").read_text()
    for words in ("Backbone", "test_efficientnet", "Test accuracy", "ECE", "uint8 RGB",
                  "Known limits", "top-1 agreement 100.00 %"):
        assert words in card, words


def test_an_existing_export_is_not_overwritten(exported: Path, trained_run: Path) -> None:
    before = exported.read_bytes()
    result = _export(str(trained_run), "--output", str(exported))
    assert result.returncode == 2 and "already exists" in result.stderr
    assert result.stderr.count("\n") == 1 and exported.read_bytes() == before


def test_a_failed_check_fails_the_command(trained_run: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "MAX_LOGIT_DIFF", 0.0)  # no export can meet this
    (tmp_path / "m.onnx").write_bytes(b"an earlier model")
    result = _export(str(trained_run), "--output", str(tmp_path / "m.onnx"), "--images", "256",
                     "--force")
    assert result.returncode == 1
    # The earlier model is kept; the failed one is left beside it for inspection.
    assert (tmp_path / "m.onnx").read_bytes() == b"an earlier model"
    assert (tmp_path / "m.failed.onnx").exists() and not (tmp_path / "m_card.md").exists()


def test_tf_same_padding_is_frozen_into_a_static_graph(tmp_path: Path) -> None:
    """The real backbone: its stride-2 "same" convs export without shape arithmetic."""
    cfg = default_part("model", weights="none", explicit_depthwise_padding=False)
    torch.manual_seed(0)
    model = build_model(cfg, 10).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    trained = TrainedModel(model, build_preprocess(model, cfg, False),
                           tuple(map(str, range(10))), 64, cfg, tmp_path / "x.pt")
    wrapper = export.ImageClassifier(trained).eval()
    with torch.no_grad():
        before = wrapper(images)
        assert export.freeze_same_padding(model, 64) == 5  # stem + 4 stride-2 dw
        torch.testing.assert_close(wrapper(images), before, rtol=0, atol=1e-5)
    output = tmp_path / "lite0.onnx"
    export.export_onnx(wrapper, output, {"classes": "[]"})
    ops = Counter(node.op_type for node in onnx.load(str(output)).graph.node)
    # Pads folded into the convs; one Shape op remains, for the dynamic batch size.
    assert not {"Gather", "Ceil", "Max", "Pad"} & set(ops) and ops["Shape"] <= 1, ops
    assert ops["Conv"] == 49
    check = export.verify(output, wrapper, images)
    assert check.passed and check.agreement == 1.0
