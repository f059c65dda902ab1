"""`cutmix-predict` and images.py: formats, modes, sizes, EXIF, bad files, csv/json output."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cutmix_runner.images import load_image
from cutmix_runner.inference import load_test_set, load_trained
from cutmix_runner.predict import classify
from tests.helpers import ToolResult, run_tool

N = 100  # test images per variant


def _predict(*args: str) -> ToolResult:
    return run_tool("predict", *args)


@pytest.fixture(scope="module")
def test_set(trained_run: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_test_set(load_trained(trained_run), trained_run)
    return images[:N].numpy().transpose(0, 2, 3, 1), labels[:N].numpy()


def _variants(rgb: np.ndarray) -> dict[str, Image.Image]:
    image = Image.fromarray(rgb)
    big = image.resize((500, 500), Image.Resampling.BICUBIC)
    rgba = image.convert("RGBA")
    rgba.putalpha(255)
    return {"png": image, "bmp": image, "tiff": image, "webp": image, "jpg": image,
            "big.jpg": big, "64.png": image.resize((64, 64), Image.Resampling.BICUBIC),
            "wide.png": Image.fromarray(np.pad(rgb, ((0, 0), (8, 8), (0, 0)), mode="edge")),
            "rgba.png": rgba, "gray.png": image.convert("L"),
            "palette.gif": image.convert("P", palette=Image.Palette.ADAPTIVE)}


COLOUR = ("png", "bmp", "tiff", "webp", "jpg", "big.jpg", "64.png", "wide.png", "rgba.png")


@pytest.fixture(scope="module")
def image_folder(test_set: tuple[np.ndarray, np.ndarray],
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test images as files: every format, mode and size, JPEG at quality 85."""
    folder = tmp_path_factory.mktemp("photos")
    for i, rgb in enumerate(test_set[0]):
        for name, image in _variants(rgb).items():
            sub = folder / name.replace(".", "_")
            sub.mkdir(exist_ok=True)
            options = {"quality": 85} if name.endswith("jpg") else {}
            image.save(sub / f"{i:03d}.{name.split('.')[-1]}", **options)
    return folder


def test_files_in_every_format_are_classified_about_as_well_as_the_test_set(
        trained_run: Path, image_folder: Path, test_set: tuple[np.ndarray, np.ndarray]) -> None:
    trained = load_trained(trained_run)
    summary = json.loads((trained_run / "summary.json").read_text())
    labels = test_set[1]
    for variant in sorted(image_folder.iterdir()):
        files = sorted(variant.iterdir())
        rows = classify(trained, files, topk=1)
        assert all(r.error is None for r in rows), variant.name
        predicted = [trained.classes.index(r.labels[0]) for r in rows]
        accuracy = float(np.mean(np.array(predicted) == labels))
        if variant.name.replace("_", ".") in COLOUR:
            assert accuracy >= summary["test_accuracy_single_view"] - 0.02, variant.name
        elif variant.name == "gray_png":  # colour carries the synthetic classes: compare with
            # the model on the same images made gray in memory (L replicated to RGB)
            gray = torch.from_numpy(np.stack([np.asarray(Image.fromarray(rgb).convert("L"))
                                              for rgb in test_set[0]]))
            expected = trained.logits(gray[:, None].expand(-1, 3, -1, -1).contiguous())
            assert predicted == expected.argmax(-1).tolist()
        else:  # palette: 256 adaptive colours keep the classes
            assert accuracy >= summary["test_accuracy_single_view"] - 0.05, variant.name


def test_png_at_32_px_gives_exactly_the_test_tensor(test_set: tuple[np.ndarray, np.ndarray],
                                                    tmp_path: Path) -> None:
    Image.fromarray(test_set[0][0]).save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png"), test_set[0][0].transpose(2, 0, 1))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    upright = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    upright.save(tmp_path / "upright.png")
    # A camera that stored the pixels turned 90 degrees and says so in EXIF (orientation 6).
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.png", exif=exif)
    assert not np.array_equal(np.asarray(stored), np.asarray(upright))
    assert np.array_equal(load_image(tmp_path / "sideways.png"),
                          load_image(tmp_path / "upright.png"))


def test_modes_16_bit_cmyk_and_transparency(tmp_path: Path) -> None:
    gray = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 256
    Image.fromarray((gray * 257).astype(np.uint16)).save(tmp_path / "16bit.png")
    loaded = load_image(tmp_path / "16bit.png")
    assert np.array_equal(loaded[0], gray.astype(np.uint8))  # scaled, not clipped at 255
    rgb = np.full((32, 32, 3), (200, 40, 90), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tiff")
    assert np.abs(load_image(tmp_path / "cmyk.tiff").astype(int)
                  - rgb.transpose(2, 0, 1)).max() <= 2
    clear = Image.new("RGBA", (32, 32), (10, 20, 30, 0))
    clear.save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png") == 255).all()  # composited on white
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "anim.gif")[0].mean() > 200  # the first (red) frame


def _bad_files(folder: Path) -> dict[str, str]:
    """file name -> the words its stderr line must contain."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "t.jpg")
    raw = (folder / "t.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (folder / "t.jpg").unlink()
    (folder / "notes.png").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")  # 400 Mpx, a few kB on disk
    (folder / "dangling.png").symlink_to(folder / "gone.png")  # a link that points nowhere
    return {"truncated.jpg": "damaged image", "notes.png": "not an image",
            "empty.png": "empty file", "bomb.png": "decompression-bomb",
            "missing.jpg": "no such file", "dangling.png": "no such file"}


def test_bad_files_are_error_rows_and_the_rest_is_classified(trained_run: Path,
                                                             image_folder: Path,
                                                             tmp_path: Path) -> None:
    bad = _bad_files(tmp_path / "bad")
    good = sorted((image_folder / "png").iterdir())[:3]
    paths = [*map(str, good), str(tmp_path / "bad"), str(tmp_path / "bad" / "missing.jpg")]
    result = _predict(str(trained_run), *paths, "--format", "csv", "--topk", "2")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(bad)
    for name, words in bad.items():
        line = next(ln for ln in lines if f"/{name}:" in ln)
        assert line.startswith("cutmix-predict: skipped") and words in line, line
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["filename", "label_0", "label_1", "prob_0", "prob_1", "error"]
    assert len(rows) == 3 + len(bad)
    assert all(r["error"] == "" and r["label_0"] and 0 < float(r["prob_0"]) <= 1
               for r in rows[:3])
    assert all(float(r["prob_0"]) >= float(r["prob_1"]) for r in rows[:3])
    assert {Path(r["filename"]).name for r in rows if r["error"]} == set(bad)


def test_exit_status_2_when_nothing_is_classified_or_the_run_is_unusable(
        trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    result = _predict(str(trained_run), str(tmp_path / "empty.png"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (tmp_path / "no_images").mkdir()
    for args, words in [((str(tmp_path), str(tmp_path / "empty.png")), "no checkpoint"),
                        ((str(trained_run), str(tmp_path / "no_images")), "no image files"),
                        ((str(trained_run), str(tmp_path / "empty.png"), "--device", "cuda:7"),
                         "--device cuda:7"),
                        ((str(trained_run), str(tmp_path / "empty.png"), "--device", "tpu"),
                         "--device tpu"),
                        ((str(trained_run), str(tmp_path / "empty.png"), "--output",
                          str(tmp_path / "no_images")), "is a folder")]:
        bad = _predict(*args)
        assert bad.returncode == 2, args
        assert bad.stderr.count("\n") == 1 and words in bad.stderr, bad.stderr


def test_json_output_and_flip_tta(trained_run: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions.json"
    result = _predict(str(trained_run), str(image_folder / "png"), "--format", "json",
                      "--output", str(out), "--tta", "flip", "--topk", "3")
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert len(records) == N
    first = records[0]
    assert set(first) == {"filename", "label", "prob", "error"}
    assert len(first["label"]) == len(first["prob"]) == 3 and first["error"] is None
    # --tta flip: the softmax of the mean of the image's and its mirror's logits.
    trained = load_trained(trained_run)
    image = torch.from_numpy(load_image(Path(first["filename"])))[None]
    mean = (trained.logits(image) + trained.logits(image.flip(-1))) / 2
    assert first["prob"][0] == pytest.approx(mean.softmax(-1).max().item(), abs=1e-6)
    again = _predict(str(trained_run), str(image_folder / "png"), "--output", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr  # nothing overwritten
    assert json.loads(out.read_text()) == records
