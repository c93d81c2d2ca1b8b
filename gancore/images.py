"""Image data: digits, stacked digits (1000 modes) with a classifier-based mode metric, user images.

The digit source is the 8×8 handwritten digits that scikit-learn ships (1797 images), so nothing
is downloaded. A fixed split (seed 0) keeps 30% of the source out of every training set: the
digit classifier is tested on it. Images are upsampled bilinearly to ``size`` × ``size``
(default 16) and scaled to [−1, 1] (G ends in tanh).

* ``digits`` — one digit per image, 1 channel, 10 modes.
* ``stacked-digits`` — three independently drawn digits as the three channels (Srivastava et
  al.'s Stacked MNIST at small scale): 1000 modes, the triple of classes. Scored on 26,000
  samples: each channel is classified, modes captured = distinct triples seen, and
  KL(mode histogram ‖ uniform).
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.functional import interpolate

from gancore.checkpoint import atomic_write
from gancore.data import Dataset
from gancore.errors import GancoreError

SIZE = 16
HELD_OUT = 0.3
CLASSIFIER_VERSION = 2  # bump when training changes: cached classifiers of older versions are not used


@lru_cache(maxsize=1)
def digit_source() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, held-out images, held-out labels); images (n, 8, 8) in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise GancoreError("the digit datasets need scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    images = torch.as_tensor(digits.images / 16.0, dtype=torch.float32)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.as_tensor(np.random.default_rng(0).permutation(len(labels)))
    n_test = int(HELD_OUT * len(labels))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def to_model_range(images: torch.Tensor, size: int) -> torch.Tensor:
    """(n, C, h, w) images in [0, 1] -> (n, C, size, size) in [-1, 1]."""
    if images.shape[-1] != size:
        images = interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images * 2 - 1


class DigitClassifier(nn.Module):
    """A small CNN for one-channel digits in [-1, 1] of any power-of-two side ≥ 8.

    It works at the source's 8×8: larger inputs are area-averaged down first, which makes
    scoring 26,000 three-channel samples cheap on a CPU.
    """

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 16, 128), nn.ReLU(), nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 8:
            x = nn.functional.adaptive_avg_pool2d(x, 8)
        return self.net(x)


def cache_dir() -> Path:
    """Where trained helpers are cached: $GANCORE_CACHE, else $XDG_CACHE_HOME/gancore, else ~/.cache/gancore."""
    if os.environ.get("GANCORE_CACHE"):
        return Path(os.environ["GANCORE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gancore"


def train_digit_classifier(epochs: int = 60, seed: int = 0) -> tuple[DigitClassifier, float]:
    """Train the classifier on the training split (with ±1 pixel shifts); return it and its held-out accuracy.

    Training runs on one thread: sums over more threads round differently, and at a constant
    learning rate those differences grew into classifiers 0.4 points apart in held-out accuracy
    (and different mode counts) between a benchmark worker and a default process. The learning
    rate decays linearly to 0 so that the final weights settle.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_x, train_y, test_x, test_y = digit_source()
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = DigitClassifier()
        inputs = to_model_range(train_x[:, None], 8)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        total = epochs * math.ceil(len(inputs) / 64)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for batch in order.split(64):
                shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
                x = torch.roll(inputs[batch], shifts=shift, dims=(2, 3))
                loss = nn.functional.cross_entropy(model(x), train_y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(to_model_range(test_x[:, None], 8)).argmax(1) == test_y).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    return model, accuracy


@lru_cache(maxsize=1)
def digit_classifier() -> tuple[DigitClassifier, float]:
    """The cached classifier (trained and cached on first use) and its held-out accuracy."""
    path = cache_dir() / f"digit-classifier-v{CLASSIFIER_VERSION}.pt"
    model = DigitClassifier()
    if path.is_file():
        try:
            state = torch.load(path, weights_only=True)
            model.load_state_dict(state["model"])
            return model.eval(), state["accuracy"]
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    model, accuracy = train_digit_classifier()
    try:
        atomic_write(path, lambda handle: torch.save({"model": model.state_dict(), "accuracy": accuracy}, handle))
    except OSError:
        pass  # an unwritable cache only costs retraining next time
    return model, accuracy


@torch.no_grad()
def digit_mode_coverage(samples: torch.Tensor, classifier: nn.Module) -> dict:
    """Classify every channel of (n, C, H, W) samples; a mode is the tuple of C classes (10**C modes).

    :return: ``modes_captured``, ``n_modes``, ``n_samples``, ``reverse_kl`` (KL of the mode
        histogram against uniform, nats) and ``mode_counts``.
    """
    samples = samples.detach().float().cpu()
    n, channels = samples.shape[:2]
    n_modes = 10**channels
    if not torch.isfinite(samples).all():
        counts = torch.zeros(n_modes, dtype=torch.long)
    else:
        flat = samples.clamp(-1, 1).reshape(n * channels, 1, *samples.shape[2:])
        classes = torch.cat([classifier(part).argmax(1) for part in flat.split(8192)]).reshape(n, channels)
        mode = (classes * (10 ** torch.arange(channels - 1, -1, -1))).sum(1)
        counts = torch.bincount(mode, minlength=n_modes)
    share = counts.double() / max(n, 1)
    present = share > 0
    return {
        "modes_captured": int(present.sum()),
        "n_modes": n_modes,
        "n_samples": n,
        "reverse_kl": float((share[present] * (share[present] * n_modes).log()).sum()) if present.any() else None,
        "mode_counts": counts.tolist(),
    }


def _digit_dataset(name: str, channels: int, n: int, rng: np.random.Generator, size: int) -> Dataset:
    train_x, _, _, _ = digit_source()
    index = torch.as_tensor(rng.integers(len(train_x), size=(n, channels)))
    images = to_model_range(train_x[index], size)  # (n, channels, 8, 8) -> (n, channels, size, size)
    classifier, _ = digit_classifier()
    return Dataset(name, images, scorer=lambda samples: digit_mode_coverage(samples, classifier), eval_samples=26000 if channels == 3 else 2500)


def digits(n: int, rng: np.random.Generator, size: int = SIZE) -> Dataset:
    return _digit_dataset("digits", 1, n, rng, size)


def stacked_digits(n: int, rng: np.random.Generator, size: int = SIZE) -> Dataset:
    return _digit_dataset("stacked-digits", 3, n, rng, size)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_image_folder(folder: Path) -> Dataset:
    """Every PNG/JPEG in ``folder`` (same size; RGB, or grey when all are grey), scaled to [−1, 1]."""
    from PIL import Image, UnidentifiedImageError

    # regular files only: a FIFO or device named like an image would block or never end
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise GancoreError(f"{folder}: no .png/.jpg/.jpeg images")
    arrays = []
    for path in files:
        try:
            with Image.open(path) as image:
                grey = image.mode in ("L", "1", "I;16")
                arrays.append((grey, np.asarray(image.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0))
        except (UnidentifiedImageError, OSError) as error:
            raise GancoreError(f"{path}: not a readable image ({type(error).__name__})") from None
        except Image.DecompressionBombError:
            raise GancoreError(f"{path}: more pixels than PIL will decode safely (a decompression bomb?); use smaller images") from None
    all_grey = all(grey for grey, _ in arrays)
    stacked = [a if all_grey else (np.repeat(a[..., None], 3, axis=-1) if grey else a) for grey, a in arrays]
    shapes = {a.shape for a in stacked}
    if len(shapes) > 1:
        raise GancoreError(f"{folder}: images differ in size ({', '.join(map(str, sorted(shapes)[:3]))}); resize them to one size")
    return image_dataset(folder.name, np.stack(stacked))


def image_dataset(name: str, images: np.ndarray) -> Dataset:
    """(n, H, W) or (n, H, W, C) images, uint8 or floats in [0, 1] -> a Dataset in [−1, 1], (n, C, H, W)."""
    if images.dtype == np.uint8:
        images = images / 255.0
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise GancoreError(f"{name}: images must be (n, H, W) or (n, H, W, C) with C = 1 or 3; got shape {images.shape}")
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise GancoreError(f"{name}: image values must be uint8 or floats in [0, 1]")
    height, width = images.shape[1:3]
    if height != width or height < 8 or 2 ** round(math.log2(height)) != height:
        raise GancoreError(f"{name}: images must be square with a power-of-two side ≥ 8 (got {height}×{width}) for the conv nets")
    tensor = torch.as_tensor(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), dtype=torch.float32)
    return Dataset(name, tensor * 2 - 1)
