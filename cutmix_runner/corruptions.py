"""CIFAR-10-C corruptions (Hendrycks & Dietterich, 2019) at their 32 x 32 severity parameters.

Each corruption maps a uint8 batch to a corrupted uint8 batch in NumPy, SciPy and Pillow,
deterministically for a seed: every image has its own NumPy generator, seeded by (seed,
corruption, severity, index in the test set), so an image is corrupted the same way whatever
batch or `--limit` it comes in. The parameters are those of the reference script `make_cifar_c.py`;
the README's table lists them. As in that script, results are truncated to uint8.

Severity 0 is the identity. All 15 benchmark corruptions are here; `frost` blends in the
reference's photographs of frost, which this package does not ship: it reads them from the
`imagecorruptions` package's data files (the `robustness` extra; its code is never imported, so
its OpenCV dependency is not needed). Without them, `frost` is unavailable and "all" means the
other 14. `motion_blur` (and the
motion streaks of `snow`) re-implement ImageMagick's MotionBlurImage kernel (a one-sided
Gaussian along a random direction) instead of calling ImageMagick, so they match the reference
in kind and strength, not bit for bit.
"""

from __future__ import annotations

import functools
import importlib.util
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy import ndimage

Batch = np.ndarray  # (N, H, W, 3) float in [0, 1] inside, uint8 at the edges
Generators = list[np.random.Generator]  # one per image of the batch
Corruption = Callable[[Batch, int, Generators], Batch]

# Per severity 1..5, as in make_cifar_c.py.
PARAMS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],  # noise std
    "shot_noise": [500, 250, 100, 75, 50],  # Poisson photon count at full scale
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],  # salt-and-pepper fraction
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # disk r, alias
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],  # radius, sigma
    "zoom_blur": [1.06, 1.11, 1.16, 1.21, 1.26],  # zooms 1.00, 1.01, ... below this
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],  # strength, wibble decay
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],  # added to HSV value
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],  # factor towards the per-channel mean
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                          (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],  # x image size: alpha, sigma,
    #                                                                 affine jitter
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],  # downscale factor (box filter both ways)
    "jpeg_compression": [80, 65, 58, 50, 40],  # JPEG quality
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],  # image, frost weight
}
# The reference's frost photographs, scaled by 0.2 for 32 x 32 images; it draws among the first
# five (np.random.randint(5)), as here.
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FROST_SCALE = 0.2
FROST_HINT = "pip install 'cutmix-runner[robustness]' (the imagecorruptions package's frost images)"


class FrostUnavailable(LookupError):
    """The frost photographs are not installed."""


def _gaussian(x: Batch, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> Batch:
    """skimage.filters.gaussian over the image axes of a batch (N, H, W, C) or one plane."""
    if sigma == 0:
        return x
    sigmas = (0, sigma, sigma, 0) if x.ndim == 4 else (sigma, sigma)
    return ndimage.gaussian_filter(x, sigma=sigmas, mode=mode, truncate=truncate)


def _draw(rngs: Generators, draw: Callable[[np.random.Generator], np.ndarray]) -> np.ndarray:
    """One draw per image, from that image's own generator, stacked along the batch."""
    return np.stack([draw(rng) for rng in rngs])


def gaussian_noise(x: Batch, severity: int, rngs: Generators) -> Batch:
    scale = PARAMS["gaussian_noise"][severity - 1]
    return x + _draw(rngs, lambda rng: rng.normal(size=x.shape[1:], scale=scale))


def shot_noise(x: Batch, severity: int, rngs: Generators) -> Batch:
    c = PARAMS["shot_noise"][severity - 1]
    return np.stack([rng.poisson(image * c) for rng, image in zip(rngs, x, strict=True)]) / c


def impulse_noise(x: Batch, severity: int, rngs: Generators) -> Batch:
    amount = PARAMS["impulse_noise"][severity - 1]
    draws = _draw(rngs, lambda rng: rng.random((2, *x.shape[1:])))
    flipped, salted = draws[:, 0] <= amount, draws[:, 1] <= 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    size = 8 if radius <= 8 else int(radius)
    grid = np.arange(-size, size + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    # The reference antialiases with a 3x3 (5x5 beyond radius 8) Gaussian, reflect-101 borders.
    taps = np.arange(-1, 2) if radius <= 8 else np.arange(-2, 3)
    g = np.exp(-taps ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    disk = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
    return ndimage.correlate1d(disk, g, axis=1, mode="mirror")


def defocus_blur(x: Batch, severity: int, rngs: Generators) -> Batch:
    kernel = _disk(*PARAMS["defocus_blur"][severity - 1])
    return ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")


def glass_blur(x: Batch, severity: int, rngs: Generators) -> Batch:
    sigma, delta, iterations = PARAMS["glass_blur"][severity - 1]
    pixels = (_gaussian(x, sigma) * 255).astype(np.uint8)
    return _gaussian(local_shuffle(pixels, delta, iterations, rngs) / 255.0, sigma)


def local_shuffle(pixels: np.ndarray, delta: int, iterations: int,
                  rngs: Generators) -> np.ndarray:
    """Glass blur's pixel moves, bottom-right to top-left, in place.

    The reference writes `x[h, w], x[h2, w2] = x[h2, w2], x[h, w]` on NumPy views, which copies
    the neighbour's pixel into (h, w) and leaves the neighbour as it was: not a swap. That is
    what is done here, so a pixel moves at most `delta` per axis and iteration.
    """
    n, h, w, _ = pixels.shape
    positions = [(r, c) for r in range(h - delta, delta, -1) for c in range(w - delta, delta, -1)]
    # Per image and iteration, the (dx, dy) of every position, in the reference's draw order.
    moves = _draw(rngs, lambda rng: rng.integers(-delta, delta,
                                                 size=(iterations, len(positions), 2)))
    every = np.arange(n)
    for it in range(iterations):
        for k, (row, col) in enumerate(positions):
            dx, dy = moves[:, it, k, 0], moves[:, it, k, 1]
            pixels[every, row, col] = pixels[every, row + dy, col + dx]
    return pixels


def _motion(x: Batch, radius: float, sigma: float, angles: np.ndarray) -> Batch:
    """ImageMagick's MotionBlurImage: a one-sided Gaussian of width 2r+1 along each angle."""
    width = int(2 * np.ceil(radius) + 1)
    taps = np.arange(width)
    kernel = np.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    n, h, w = x.shape[:3]
    rad = np.deg2rad(angles)
    rows0, cols0 = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    every = np.arange(n)[:, None, None]
    out = np.zeros_like(x)
    for i, weight in zip(taps, kernel, strict=True):
        dx = np.ceil(i * np.cos(rad) - 0.5).astype(int)[:, None, None]
        dy = np.ceil(i * np.sin(rad) - 0.5).astype(int)[:, None, None]
        rows = np.clip(rows0 + dy, 0, h - 1)  # edge pixels repeat, as ImageMagick's default
        cols = np.clip(cols0 + dx, 0, w - 1)
        out += weight * x[every, rows, cols]
    return out


def motion_blur(x: Batch, severity: int, rngs: Generators) -> Batch:
    radius, sigma = PARAMS["motion_blur"][severity - 1]
    return _motion(x, radius, sigma, _draw(rngs, lambda rng: rng.uniform(-45, 45)))


def _clipped_zoom(x: Batch, factor: float) -> Batch:
    """The centre, zoomed by `factor`: scipy.ndimage.zoom(order=1)'s corner-aligned bilinear
    resampling, done by torch for speed."""
    import torch
    import torch.nn.functional as F

    h = x.shape[1]
    crop = int(np.ceil(h / factor))
    top = (h - crop) // 2
    centre = torch.from_numpy(np.ascontiguousarray(x[:, top:top + crop, top:top + crop]))
    size = int(round(crop * factor))
    zoomed = F.interpolate(centre.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                           align_corners=True).permute(0, 2, 3, 1).numpy()
    trim = (zoomed.shape[1] - h) // 2
    return zoomed[:, trim:trim + h, trim:trim + h]


def zoom_blur(x: Batch, severity: int, rngs: Generators) -> Batch:
    factors = np.arange(1, PARAMS["zoom_blur"][severity - 1], 0.01)
    x = x.astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return (x + out) / (len(factors) + 1)


def snow(x: Batch, severity: int, rngs: Generators) -> Batch:
    loc, scale, zoom, threshold, radius, sigma, keep = PARAMS["snow"][severity - 1]
    layer = _draw(rngs, lambda rng: rng.normal(size=(*x.shape[1:3], 1), loc=loc, scale=scale))
    angles = _draw(rngs, lambda rng: rng.uniform(-135, -45))
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8) / 255.0  # the reference's PNG trip
    # ImageMagick hands the blurred layer back as 8-bit pixels.
    layer = np.round(_motion(layer, radius, sigma, angles) * 255) / 255.0
    gray = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, gray * 1.5 + 0.5)
    return x + layer + np.rot90(layer, k=2, axes=(1, 2))


def _plasma_fractal(rng: np.random.Generator, size: int, decay: float) -> np.ndarray:
    """Diamond-square height map in [0, 1], as the reference's plasma_fractal."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        grid[half:size:step, half:size:step] = wibbled(square)
        centres = grid[half:size:step, half:size:step]
        corners = grid[0:size:step, 0:size:step]
        top = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:size:step, half:size:step] = wibbled(top)
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half:size:step, 0:size:step] = wibbled(left)
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def fog(x: Batch, severity: int, rngs: Generators) -> Batch:
    strength, decay = PARAMS["fog"][severity - 1]
    h = x.shape[1]
    size = 1 << (h - 1).bit_length()
    haze = _draw(rngs, lambda rng: _plasma_fractal(rng, size, decay)[:h, :h])
    top = x.max(axis=(1, 2, 3), keepdims=True)
    return (x + strength * haze[..., None]) * top / (top + strength)


def brightness(x: Batch, severity: int, rngs: Generators) -> Batch:
    hsv = rgb_to_hsv(np.clip(x, 0, 1))
    hsv[..., 2] = np.clip(hsv[..., 2] + PARAMS["brightness"][severity - 1], 0, 1)
    return hsv_to_rgb(hsv)


def contrast(x: Batch, severity: int, rngs: Generators) -> Batch:
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * PARAMS["contrast"][severity - 1] + means


def elastic_transform(x: Batch, severity: int, rngs: Generators) -> Batch:
    n, h, w, _ = x.shape
    alpha, sigma, jitter = (v * h for v in PARAMS["elastic_transform"][severity - 1])
    centre, side = np.float32(h // 2), h // 3
    # Three points around the centre, (x, y) as OpenCV takes them, moved at random.
    src = np.float32([[centre + side, centre + side], [centre + side, centre - side],
                      [centre - side, centre - side]])
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.empty_like(x)
    for i, rng in enumerate(rngs):
        dst = src + rng.uniform(-jitter, jitter, size=src.shape).astype(np.float32)
        image = _affine(x[i], src, dst)
        dx = _gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, "reflect", 3.0) * alpha
        dy = _gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, "reflect", 3.0) * alpha
        for c in range(3):
            out[i, :, :, c] = ndimage.map_coordinates(image[:, :, c], (rows + dy, cols + dx),
                                                      order=1, mode="reflect")
    return out


def _affine(image: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """cv2.warpAffine of the transform taking `src` to `dst`, bilinear, reflect-101 borders."""
    forward = np.linalg.solve(np.c_[src, np.ones(3)], dst).T  # 2x3, (x, y) coordinates
    swap = np.array([[0, 1], [1, 0]])
    matrix = swap @ forward[:, :2] @ swap  # (row, col) coordinates
    shift = swap @ forward[:, 2]
    inverse = np.linalg.inv(matrix)
    return np.stack([ndimage.affine_transform(image[:, :, c], inverse, offset=-inverse @ shift,
                                              order=1, mode="mirror") for c in range(3)], -1)


def _per_image(x: Batch, change: Callable[[Image.Image], Image.Image]) -> Batch:
    pixels = (np.clip(x, 0, 1) * 255).astype(np.uint8)
    return np.stack([np.asarray(change(Image.fromarray(p)), dtype=np.float64) / 255.0
                     for p in pixels])


def pixelate(x: Batch, severity: int, rngs: Generators) -> Batch:
    h = x.shape[1]
    small = int(h * PARAMS["pixelate"][severity - 1])
    return _per_image(x, lambda im: im.resize((small, small), Image.Resampling.BOX)
                      .resize((h, h), Image.Resampling.BOX))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def jpeg_compression(x: Batch, severity: int, rngs: Generators) -> Batch:
    quality = PARAMS["jpeg_compression"][severity - 1]
    return _per_image(x, lambda im: _jpeg(im, quality))


def frost_folder() -> Path | None:
    """Where the imagecorruptions package keeps its frost photographs, found without importing
    it (its __init__ imports OpenCV)."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "frost"
    return folder if all((folder / f).exists() for f in FROST_FILES) else None


@functools.cache
def frost_layers() -> tuple[np.ndarray, ...]:
    """The frost photographs as RGB floats in [0, 1], scaled as the reference does."""
    folder = frost_folder()
    if folder is None:
        raise FrostUnavailable(f"the frost corruption needs its photographs: {FROST_HINT}")
    layers = []
    for name in FROST_FILES:
        with Image.open(folder / name) as image:
            rgb = image.convert("RGB")
            size = (round(rgb.width * FROST_SCALE), round(rgb.height * FROST_SCALE))
            layers.append(np.asarray(rgb.resize(size, Image.BILINEAR), dtype=np.float64) / 255)
    return tuple(layers)


def frost(x: Batch, severity: int, rngs: Generators) -> Batch:
    keep, weight = PARAMS["frost"][severity - 1]
    layers, (h, w) = frost_layers(), x.shape[1:3]
    out = np.empty_like(x)
    for i, rng in enumerate(rngs):  # a photograph and a crop of it per image
        layer = layers[int(rng.integers(len(layers)))]
        top = int(rng.integers(0, layer.shape[0] - h))
        left = int(rng.integers(0, layer.shape[1] - w))
        out[i] = keep * x[i] + weight * layer[top:top + h, left:left + w]
    return out


# name -> corruption, in the benchmark's order, except `frost`, last so that the other 14 keep
# their seeds; `cutmix-eval --corruptions` takes these names.
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur,
    "zoom_blur": zoom_blur, "snow": snow, "fog": fog, "brightness": brightness,
    "contrast": contrast, "elastic_transform": elastic_transform, "pixelate": pixelate,
    "jpeg_compression": jpeg_compression, "frost": frost,
}


def available() -> list[str]:
    """The corruptions this installation can generate: all, or all but frost."""
    return [n for n in CORRUPTIONS if n != "frost" or frost_folder() is not None]


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0,
            first_index: int = 0) -> np.ndarray:
    """uint8 (N, 3, H, W) -> the same images under corruption `name` at `severity` (0-5).

    `first_index` is the test-set index of images[0]: image i draws from its own generator,
    seeded by (seed, corruption, severity, first_index + i).
    """
    if severity == 0:
        return images
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 0..5, got {severity}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    key = [seed, list(CORRUPTIONS).index(name), severity]
    rngs = [np.random.default_rng([*key, first_index + i]) for i in range(len(images))]
    x = images.transpose(0, 2, 3, 1).astype(np.float64) / 255.0
    y = CORRUPTIONS[name](x, severity, rngs)
    out = (np.clip(y, 0, 1) * 255).astype(np.uint8)  # truncated, as the reference's np.uint8
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
