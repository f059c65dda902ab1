"""CIFAR-10 test images as ordinary image files, to check `cutmix-predict` against the test set.

    python scripts/cifar_files.py write DIR [--root ../shared/data/cifar10] [--count 2000]
    cutmix-predict RUN_DIR DIR --format csv --output DIR.csv
    python scripts/cifar_files.py score DIR.csv
    python scripts/cifar_files.py tensors RUN_DIR [--count 2000]
    python scripts/cifar_files.py filters [--count 500]

`write` saves the first COUNT test images, each once per variant below, as
DIR/VARIANT/INDEX_LABEL.EXT: PNG, BMP, TIFF, WebP and JPEG (quality 85; also with 4:4:4 chroma)
at 32 px; upscaled bicubically to 64, 224 and 500 px (JPEG 85); RGBA PNG; and the grayscale and
palette modes. `score` reads cutmix-predict's csv and prints top-1 accuracy per variant from the
labels in the file names; `tensors` prints the run's single-view accuracy on the same images
straight from the test tensors, the number the files are compared with. `filters` measures the
downscale filter of images.py: test images upscaled bicubically to 64-500 px and shrunk back to
32 px with each Pillow filter, mean absolute pixel error against the originals.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from cutmix_runner.data import CIFAR10_CLASSES, load_cifar10

BICUBIC = Image.Resampling.BICUBIC


def variants(rgb: np.ndarray) -> dict[str, tuple[Image.Image, str]]:
    """variant -> (image, file extension)."""
    image = Image.fromarray(rgb)
    rgba = image.convert("RGBA")
    return {
        "png": (image, "png"), "bmp": (image, "bmp"), "tiff": (image, "tiff"),
        "webp": (image, "webp"), "jpeg85": (image, "jpg"), "jpeg85_444": (image, "jpg"),
        "jpeg85_64px": (image.resize((64, 64), BICUBIC), "jpg"),
        "jpeg85_224px": (image.resize((224, 224), BICUBIC), "jpg"),
        "jpeg85_500px": (image.resize((500, 500), BICUBIC), "jpg"),
        "rgba_png": (rgba, "png"), "gray_png": (image.convert("L"), "png"),
        "palette_gif": (image.convert("P", palette=Image.Palette.ADAPTIVE), "gif"),
    }


def write(out: Path, root: str, count: int) -> None:
    _, _, images, labels = load_cifar10(root)
    for i in range(count):
        rgb = images[i].numpy().transpose(1, 2, 0)
        name = f"{i:05d}_{CIFAR10_CLASSES[int(labels[i])]}"
        for variant, (image, ext) in variants(rgb).items():
            folder = out / variant
            folder.mkdir(parents=True, exist_ok=True)
            options = {"quality": 85} if ext == "jpg" else {}
            if variant == "jpeg85_444":
                options["subsampling"] = 0  # full chroma resolution (Pillow's default is 4:2:0)
            image.save(folder / f"{name}.{ext}", **options)
    print(f"wrote {count} test images x {len(variants(rgb))} variants to {out}")


def score(predictions: Path) -> None:
    right: dict[str, list[bool]] = defaultdict(list)
    with open(predictions) as f:
        for row in csv.DictReader(f):
            path = Path(row["filename"])
            truth = path.stem.split("_", 1)[1]
            right[path.parent.name].append(row["label_0"] == truth)
    for variant, hits in sorted(right.items()):
        print(f"{variant:14s} {100 * np.mean(hits):6.2f} %  ({len(hits)} files)")


def tensors(run: Path, count: int) -> None:
    from cutmix_runner.inference import load_test_set, load_trained

    trained = load_trained(run)
    images, labels = load_test_set(trained, run)
    right = trained.logits(images[:count], 500).argmax(-1) == labels[:count]
    print(f"tensors, single view, first {count} test images: {100 * right.float().mean():.2f} %")


def filters(root: str, count: int) -> None:
    _, _, images, _ = load_cifar10(root)
    pixels = images[:count].numpy().transpose(0, 2, 3, 1)
    methods = {name: getattr(Image.Resampling, name.upper())
               for name in ("box", "bilinear", "bicubic", "lanczos")}
    for size in (64, 100, 224, 500):
        errors = {name: [] for name in methods}
        for rgb in pixels:
            big = Image.fromarray(rgb).resize((size, size), BICUBIC)
            for name, method in methods.items():
                small = np.asarray(big.resize((32, 32), method), dtype=np.float64)
                errors[name].append(np.abs(small - rgb).mean())
        print(f"{size:4d} px: " + ", ".join(f"{n} {np.mean(e):.2f}" for n, e in errors.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("write")
    w.add_argument("out", type=Path)
    w.add_argument("--root", default="../shared/data/cifar10")
    w.add_argument("--count", type=int, default=2000)
    s = commands.add_parser("score")
    s.add_argument("predictions", type=Path)
    t = commands.add_parser("tensors")
    t.add_argument("run", type=Path)
    t.add_argument("--count", type=int, default=2000)
    f = commands.add_parser("filters")
    f.add_argument("--root", default="../shared/data/cifar10")
    f.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    if args.command == "write":
        write(args.out, args.root, args.count)
    elif args.command == "score":
        score(args.predictions)
    elif args.command == "tensors":
        tensors(args.run, args.count)
    else:
        filters(args.root, args.count)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
