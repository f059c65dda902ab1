"""Image files -> the 32 x 32 RGB uint8 arrays a CIFAR-10 model was trained on.

Any format Pillow reads (JPEG, PNG, WebP, BMP, GIF's first frame, TIFF), any size, any mode:
- EXIF orientation is applied first, so a phone photo taken sideways is classified upright.
- 16-bit images are scaled to 8 bits (Pillow's own conversion would clip them at 255).
- Transparency is composited on white, the usual background of product photos; CMYK, palette
  and grayscale images are converted to RGB.
- Geometry follows the way CIFAR images were made (objects centred and filling a small square):
  the largest centred square is cropped, then downscaled to 32 x 32 with Pillow's Lanczos filter
  (antialiased: its support widens with the scale), chosen by measurement (README "Use a trained
  model": of box, bilinear, bicubic and Lanczos it brought CIFAR test images upscaled to 64-500
  px closest to the originals); smaller images are upscaled bicubically.
- Pillow's decompression-bomb guard is an error here, warnings included.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SIZE = 32
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
BACKGROUND = (255, 255, 255)  # where an image is transparent
DOWNSCALE = Image.Resampling.LANCZOS  # see the module docstring
UPSCALE = Image.Resampling.BICUBIC


class ImageFileError(ValueError):
    """A file that cannot be classified; the message says why, in a few words."""


def find_images(paths: list[Path]) -> list[Path]:
    """Files as given, and the image files below each folder (recursively, sorted).

    A path that does not exist is kept, so that it is reported like any other bad file; so is a
    link in a folder that points nowhere but is named like an image: nothing is dropped quietly.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS
                            and (p.is_file() or (p.is_symlink() and not p.exists())))
        else:
            found.append(path)
    return found


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode -> RGB: 16-bit scaled to 8 bits, transparency on white, CMYK/palette converted."""
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit by mode; 32-bit integer images (mode I) come from 16-bit PNGs and TIFFs too.
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(values / 257.0).clip(0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.asarray(image).clip(0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def to_cifar_geometry(image: Image.Image, size: int = SIZE) -> Image.Image:
    """The largest centred square, resized to size x size (antialiased when shrinking)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side > size:
        return square.resize((size, size), DOWNSCALE)
    if side < size:
        return square.resize((size, size), UPSCALE)
    return square


def load_image(path: Path) -> np.ndarray:
    """(3, 32, 32) uint8 RGB for one file; ImageFileError naming the problem otherwise."""
    if not path.exists():
        raise ImageFileError("no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise ImageFileError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.seek(0)  # a GIF's (or TIFF's) first frame
                image.load()
                image = ImageOps.exif_transpose(image)
                rgb = to_cifar_geometry(to_rgb(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageFileError(f"too large for Pillow's decompression-bomb guard ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageFileError("not an image Pillow can read") from exc
    except (PermissionError, IsADirectoryError) as exc:
        raise ImageFileError(f"cannot read it ({exc.strerror})") from exc
    except Exception as exc:  # Pillow's decoders raise many kinds on damaged files
        raise ImageFileError(f"damaged image ({type(exc).__name__}: {exc})") from exc
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()
