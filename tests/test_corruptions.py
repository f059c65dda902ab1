"""CIFAR-10-C corruptions and `cutmix-eval`: identity at severity 0, determinism, monotone
degradation on a trained model, eval.json / mCE, and the report's robustness claim input."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cutmix_runner import corruptions
from cutmix_runner.corruption_eval import corruption_errors, evaluate_corruptions, parse_severities
from cutmix_runner.corruptions import CORRUPTIONS, FROST_FILES, PARAMS, corrupt
from cutmix_runner.inference import load_test_set, load_trained
from tests.helpers import ToolResult, run_tool

FROST_GREY = 200  # the fake frost photographs: this grey in green and blue, red a gradient


@pytest.fixture(autouse=True)
def fake_frost(tmp_path_factory: pytest.TempPathFactory,
               monkeypatch: pytest.MonkeyPatch) -> Path:
    """Frost photographs of our own, so that frost runs whether or not the robustness extra is
    installed, and the same everywhere."""
    folder = tmp_path_factory.getbasetemp() / "frost"
    if not folder.exists():
        folder.mkdir()
        for i, name in enumerate(FROST_FILES):
            pixels = np.full((300, 400, 3), FROST_GREY, dtype=np.uint8)
            pixels[:, :, 0] = np.linspace(0, 255 - 40 * i, 400).astype(np.uint8)[None, :]
            Image.fromarray(pixels).save(folder / name)
    monkeypatch.setattr(corruptions, "frost_folder", lambda: folder)
    corruptions.frost_layers.cache_clear()
    yield folder
    corruptions.frost_layers.cache_clear()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Smooth images with structure (blurs and shifts must change them), uint8 (N, 3, 32, 32)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([np.sin(xx / 3.0), np.cos(yy / 4.0), np.sin((xx + yy) / 5.0)])
    shifts = rng.uniform(0, 6, size=(6, 3, 1, 1))
    return (127.5 + 100 * np.sin(base[None] + shifts)).astype(np.uint8)


def test_at_least_twelve_corruptions_each_with_five_severities() -> None:
    assert len(CORRUPTIONS) >= 12
    assert all(len(PARAMS[name]) == 5 for name in CORRUPTIONS)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_zero_is_the_identity_and_each_level_is_deterministic(
        name: str, images: np.ndarray) -> None:
    assert corrupt(images, name, 0) is images
    for severity in (1, 5):
        first = corrupt(images, name, severity, seed=3)
        assert first.shape == images.shape and first.dtype == np.uint8
        assert np.array_equal(first, corrupt(images, name, severity, seed=3))
        assert not np.array_equal(first, images), (name, severity)
    # Severity 5 changes the images more than severity 1; except elastic_transform, whose
    # reference parameters trade a large random affine at severity 1 for a strong elastic
    # field at 5 (its CIFAR-10-C accuracies are not monotone either).
    change = [np.abs(corrupt(images, name, s).astype(int) - images).mean() for s in (1, 5)]
    assert change[1] > change[0] or name == "elastic_transform", (name, change)


def test_the_seed_changes_the_random_corruptions(images: np.ndarray) -> None:
    for name in ("gaussian_noise", "glass_blur", "fog", "elastic_transform", "motion_blur"):
        assert not np.array_equal(corrupt(images, name, 3, seed=0),
                                  corrupt(images, name, 3, seed=1)), name


def test_an_image_is_corrupted_the_same_in_any_batch(images: np.ndarray) -> None:
    for name in CORRUPTIONS:
        whole = corrupt(images, name, 4, seed=2)
        alone = corrupt(images[3:5], name, 4, seed=2, first_index=3)
        assert np.array_equal(whole[3:5], alone), name


def test_glass_blur_moves_each_pixel_at_most_delta_per_iteration() -> None:
    """The reference copies a neighbour into place (its tuple swap on NumPy views does not
    swap); so after k iterations a value has come from at most k * delta pixels away."""
    from cutmix_runner.corruptions import local_shuffle

    ids = np.arange(32 * 32).reshape(32, 32)
    pixels = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1)[None].astype(np.uint8)
    moved = local_shuffle(pixels.copy(), 1, 2, [np.random.default_rng(0)])[0].astype(int)
    source = moved[..., 0] + 256 * moved[..., 1]
    rows, cols = np.divmod(source, 32)
    distance = np.maximum(np.abs(rows - np.arange(32)[:, None]),
                          np.abs(cols - np.arange(32)[None, :]))
    assert distance.max() <= 2 and (distance > 0).any()


def test_known_values() -> None:
    flat = np.full((1, 3, 32, 32), 100, dtype=np.uint8)
    # Contrast pulls towards each channel's mean: a flat image stays as it is.
    assert np.array_equal(corrupt(flat, "contrast", 5), flat)
    # Brightness adds 0.3 to HSV value at severity 5: grey 100 -> 100 + 76.5, truncated.
    assert (corrupt(flat, "brightness", 5) == 176).all()
    # Pixelate with box filters keeps a flat image flat.
    assert np.array_equal(corrupt(flat, "pixelate", 5), flat)


def test_accuracy_falls_with_severity_on_average(trained_run: Path) -> None:
    trained = load_trained(trained_run)
    images, labels = load_test_set(trained, trained_run)
    result = evaluate_corruptions(trained, images[:100], labels[:100], list(CORRUPTIONS),
                                  [1, 2, 3, 4, 5])
    per_severity = [result["clean_accuracy"]] + [
        statistics.fmean(result["accuracy"][n][str(s)] for n in CORRUPTIONS) for s in range(1, 6)]
    assert all(a >= b for a, b in zip(per_severity, per_severity[1:], strict=False)), \
        per_severity
    assert per_severity[-1] < per_severity[0]
    assert result["mean_corruption_accuracy"] == pytest.approx(
        statistics.fmean(per_severity[1:]))


def test_mce_normalises_by_the_reference() -> None:
    ours = {"accuracy": {"fog": {"1": 0.9, "2": 0.8}, "snow": {"1": 0.5}}}
    reference = {"accuracy": {"fog": {"1": 0.8, "2": 0.6}, "snow": {"1": 0.5}}}
    result = corruption_errors(ours, reference)
    assert result["corruption_error"] == {"fog": pytest.approx(0.3 / 0.6), "snow": 1.0}
    assert result["mce"] == pytest.approx((0.5 + 1.0) / 2)


def test_parse_severities() -> None:
    assert parse_severities("1-5") == [1, 2, 3, 4, 5]
    assert parse_severities("2,4") == [2, 4] and parse_severities("3") == [3]
    with pytest.raises(ValueError):
        parse_severities("0-6")


def _eval(*args: str) -> ToolResult:
    return run_tool("evaluate", *args)


def test_cutmix_eval_writes_json_markdown_and_plot(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = _eval(str(trained_run), "--corruptions", "fog,contrast", "--severities", "1,5",
                   "--limit", "60", "--out", str(out))
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "eval.json").read_text())
    assert set(saved["accuracy"]) == {"fog", "contrast"}
    assert set(saved["accuracy"]["fog"]) == {"1", "5"} and saved["images"] == 60
    assert 0 <= saved["mean_corruption_accuracy"] <= 1
    # By default it scores in the run's own evaluation batches.
    from cutmix_runner.inference import load_trained
    assert saved["batch_size"] == load_trained(trained_run).config.trainer.eval_batch_size
    assert "| fog |" in (out / "eval.md").read_text()
    assert (out / "accuracy_vs_severity.png").stat().st_size > 1000
    again = _eval(str(trained_run), "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr
    # A checkpoint file writes into its run's eval/ folder.
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    from_file = _eval(str(copy / "checkpoints" / "best.pt"), "--corruptions", "contrast",
                      "--severities", "5", "--limit", "20", "--batch-size", "7")
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads((copy / "eval" / "eval.json").read_text())["batch_size"] == 7
    bad = _eval(str(trained_run), "--corruptions", "fros", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown fros" in bad.stderr


def test_the_report_reads_eval_json_into_the_robustness_claim(smoke_run: Path, trained_run: Path,
                                                              tmp_path: Path) -> None:
    """Two real synthetic runs, evaluated by cutmix-eval, labelled as the claim's two arms."""
    import yaml

    from cutmix_runner.report import build_report

    sweep = tmp_path / "sweep"
    means = {}
    for arm, run in (("baseline", smoke_run), ("cutmix_staged", trained_run)):
        copy = sweep / f"0_{arm}"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
        (copy / ".hydra").mkdir(exist_ok=True)
        (copy / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"experiment={arm}"]))
        result = _eval(str(copy), "--corruptions", "fog,snow", "--severities", "3,5",
                       "--limit", "60")
        assert result.returncode == 0, result.stderr
        means[arm] = json.loads((copy / "eval" / "eval.json").read_text())[
            "mean_corruption_accuracy"]
    text = build_report([sweep], tmp_path / "report").read_text()
    row = next(ln for ln in text.splitlines() if "robustness to corruptions" in ln)
    effect = 100 * (means["cutmix_staged"] - means["baseline"])
    assert f"| CutMix − baseline | full | 1 | {effect:.2f} | – | – | – | – | inconclusive (too " \
        "few seeds: n = 1) | Welch, one run in an arm; cutmix_staged − baseline |" in row
    # Evaluations of different settings do not compare.
    other = sweep / "0_baseline" / "eval" / "eval.json"
    other.write_text(json.dumps({**json.loads(other.read_text()), "images": 10}))
    text = build_report([sweep], tmp_path / "report2").read_text()
    row = next(ln for ln in text.splitlines() if "robustness to corruptions" in ln)
    assert "not measured" in row
    assert "Corruption accuracy is left out: the runs' cutmix-eval used different images" in text


def test_frost_blends_a_crop_of_a_photograph_by_the_reference_weights(images: np.ndarray) -> None:
    """Green and blue are flat grey in every fake photograph, so there each pixel is
    keep * x + weight * grey, truncated; red varies, so another seed's crops differ."""
    keep, weight = PARAMS["frost"][2]
    out = corrupt(images, "frost", 3, seed=1).astype(np.float64)
    expected = np.clip(keep * images / 255 + weight * FROST_GREY / 255, 0, 1) * 255
    # Within 3 levels: truncation, and JPEG rounding of the grey in the two .jpg photographs.
    assert np.abs(out[:, 1:] - np.floor(expected[:, 1:])).max() <= 3
    assert not np.array_equal(out, corrupt(images, "frost", 3, seed=4).astype(np.float64))


def test_without_the_photographs_frost_is_refused_and_left_out_of_all(
        trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(corruptions, "frost_folder", lambda: None)
    assert "frost" not in corruptions.available()
    result = _eval(str(trained_run), "--corruptions", "frost", "--out", str(tmp_path / "e"))
    err = result.stderr
    assert result.returncode == 2 and err.count("\n") == 1 and "robustness" in err
    assert not (tmp_path / "e").exists()


def _released_files(folder: Path, images: np.ndarray, labels: np.ndarray,
                    names: list[str]) -> None:
    """A CIFAR-10-C folder in the released layout, holding our own generated corruptions."""
    folder.mkdir()
    np.save(folder / "labels.npy", np.tile(labels, 5))
    for name in names:
        stacked = [corrupt(images, name, s, seed=0) for s in range(1, 6)]
        np.save(folder / f"{name}.npy", np.concatenate(stacked).transpose(0, 2, 3, 1))


def test_released_cifar10c_files_give_the_accuracy_of_their_pixels(
        trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Files holding exactly the corruptions cutmix-eval generates give exactly its numbers."""
    from cutmix_runner import corruption_eval

    trained = load_trained(trained_run)
    x, y = load_test_set(trained, trained_run)
    monkeypatch.setattr(corruption_eval, "RELEASED_PER_SEVERITY", len(y))
    folder = tmp_path / "CIFAR-10-C"
    _released_files(folder, x.numpy(), y.numpy(), ["fog", "frost"])
    generated = evaluate_corruptions(trained, x, y, ["fog", "frost"], [1, 5])
    assert _eval(str(trained_run), "--cifar10c", str(folder), "--severities", "1,5",
                 "--out", str(tmp_path / "e")).returncode == 0
    saved = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert saved["corruptions_from"] == "CIFAR-10-C files"
    assert saved["accuracy"] == generated["accuracy"]  # "all": the corruptions the files hold
    # A corruption the folder lacks, or labels of another data set: one line, nothing written.
    for args, message in ((["--corruptions", "snow"], "no snow.npy"),
                          (["--corruptions", "fog"], "labels.npy does not match")):
        if message.startswith("labels"):
            np.save(folder / "labels.npy", np.tile((y.numpy() + 1) % 10, 5))
        result = _eval(str(trained_run), "--cifar10c", str(folder), *args,
                       "--out", str(tmp_path / "bad"))
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert message in result.stderr
    assert not (tmp_path / "bad" / "eval.json").exists()
