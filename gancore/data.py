"""Datasets: the built-in mixtures with known modes (../shared/PROTOCOLS.md) and user point files.

A dataset is a finite set of training points plus, when known, the mode centres, the
"high quality" radius and the norm the radius is measured in, which the metrics use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gancore.errors import GancoreError, one_line
from gancore.files import check_regular_file
from gancore.memory import check_dataset_fits, require
from gancore.metrics import mode_coverage


@dataclass
class Dataset:
    """Training points and what scoring needs to know about them.

    :ivar points: (n, *shape) float32 training samples: vectors (n, dim) or images (n, C, H, W).
    :ivar modes: (K, dim) mode centres, or None when unknown (then no mode metrics).
    :ivar radius: a sample is high quality if within ``radius`` of its nearest mode.
    :ivar hq_norm: ``"l2"`` or ``"linf"``: the norm ``radius`` is measured in (nearest mode is by L2).
    :ivar scorer: for data whose modes are not points (e.g. digit classes), a function from
        samples to metrics; it replaces the nearest-mode protocol.
    :ivar eval_samples: how many samples the dataset's protocol scores.
    """

    name: str
    points: torch.Tensor
    modes: torch.Tensor | None = None
    radius: float | None = None
    hq_norm: str = "l2"
    scorer: Callable[[torch.Tensor], dict] | None = None
    eval_samples: int = 2500

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        return tuple(self.points.shape[1:])

    @property
    def dim(self) -> int:
        """The number of values in one sample."""
        return math.prod(self.shape)

    def score(self, samples: torch.Tensor) -> dict:
        """Mode metrics of ``samples`` by this dataset's protocol ({} when it has none)."""
        if self.scorer is not None:
            return self.scorer(samples)
        if self.modes is not None:
            return mode_coverage(samples.flatten(1), self.modes, self.radius, self.hq_norm)
        return {}

    def to(self, device: torch.device) -> "Dataset":
        self.points = self.points.to(device)
        if self.modes is not None:
            self.modes = self.modes.to(device)
        return self

    def sample(self, n: int, generator: torch.Generator, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``n`` training points with replacement, uniformly or with per-point ``weights``."""
        return self.points[self.sample_index(n, generator, weights).to(self.points.device)]

    def sample_index(self, n: int, generator: torch.Generator, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The indices of :meth:`sample`'s points (on the generator's device)."""
        if weights is None:
            return torch.randint(len(self.points), (n,), generator=generator, device=generator.device)
        return torch.multinomial(weights, n, replacement=True, generator=generator)


def _mixture(means: np.ndarray, std: float, n: int, rng: np.random.Generator) -> np.ndarray:
    which = rng.integers(len(means), size=n)
    return means[which] + std * rng.standard_normal((n, means.shape[1]))


def ring8(n: int, rng: np.random.Generator) -> Dataset:
    # endpoint excluded: linspace(0, 2π, 8) would repeat a mode (a bug in two public repos)
    angles = 2 * np.pi * np.arange(8) / 8
    means = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return _built("ring8", _mixture(means, 0.02, n, rng), means, 3 * 0.02)


def grid25(n: int, rng: np.random.Generator) -> Dataset:
    axis = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    means = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
    return _built("grid25", _mixture(means, 0.05, n, rng), means, 3 * 0.05)


HD1200_SHIFTS = (-1.0, -0.5, 0.0, 0.5, -2.0, -2.5, 10.0, 0.25, -13.0, -5.5)


def hd1200(n: int, rng: np.random.Generator) -> Dataset:
    # PacGAN's VEEGAN1200DPackingMixture: 700 N(0,1) dims, 500 zero dims, one scalar shift per mode
    base_mean = np.zeros(1200)
    means = base_mean[None, :] + np.array(HD1200_SHIFTS)[:, None]
    which = rng.integers(len(HD1200_SHIFTS), size=n)
    points = np.zeros((n, 1200))
    points[:, :700] = rng.standard_normal((n, 700))
    points += np.array(HD1200_SHIFTS)[which][:, None]
    # "10 std" read as every coordinate within 10 (std 1) of the nearest mean: L∞ radius 10
    return _built("hd1200", points, means, 10.0, hq_norm="linf")


def bimodal1d(n: int, rng: np.random.Generator) -> Dataset:
    means = np.array([[-5.0], [5.0]])
    return _built("bimodal1d", _mixture(means, 1.0, n, rng), means, 3.0)


def _built(name: str, points: np.ndarray, means: np.ndarray, radius: float, hq_norm: str = "l2") -> Dataset:
    return Dataset(
        name,
        torch.as_tensor(points, dtype=torch.float32),
        torch.as_tensor(means, dtype=torch.float32),
        radius,
        hq_norm,
    )


BUILTIN: dict[str, Callable[[int, np.random.Generator], Dataset]] = {
    "bimodal1d": bimodal1d,
    "ring8": ring8,
    "grid25": grid25,
    "hd1200": hd1200,
}


def _digits(name: str):
    def make(n: int, rng: np.random.Generator, image_size: int) -> Dataset:
        from gancore import images  # scikit-learn is imported only for digit data

        return {"digits": images.digits, "stacked-digits": images.stacked_digits}[name](n, rng, image_size)

    return make


IMAGE_BUILTIN = {"digits": _digits("digits"), "stacked-digits": _digits("stacked-digits")}
BUILTIN_DIMS = {"bimodal1d": 1, "ring8": 2, "grid25": 2, "hd1200": 1200}  # values per sample, known before drawing
IMAGE_CHANNELS = {"digits": 1, "stacked-digits": 3}
DATASET_NAMES = (*BUILTIN, *IMAGE_BUILTIN)


def load_dataset(name: str, path: str, n_train: int, seed: int, image_size: int = 16) -> Dataset:
    """Return the built-in dataset ``name`` (``n_train`` samples drawn with ``seed``) or the file or image folder ``path``."""
    if path:
        if Path(path).is_dir():
            from gancore.images import load_image_folder

            return load_image_folder(Path(path))
        return load_points_file(Path(path))
    rng = np.random.default_rng(seed)
    if name not in BUILTIN and name not in IMAGE_BUILTIN:
        raise GancoreError(f"unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)} or give a file with --data")
    dim = BUILTIN_DIMS[name] if name in BUILTIN else IMAGE_CHANNELS[name] * image_size**2
    check_dataset_fits(n_train, dim, torch.device("cpu"), f"dataset {name} with train.n_train={n_train}")
    if name in IMAGE_BUILTIN:
        return IMAGE_BUILTIN[name](n_train, rng, image_size)
    return BUILTIN[name](n_train, rng)


def load_points_file(path: Path) -> Dataset:
    """Load user points from .npy (n, dim), .npz (key ``x``; optional ``modes`` and ``radius``;
    or key ``images``: (n, H, W[, C]) uint8 or [0, 1] floats) or .csv (one optional header line).
    """
    check_regular_file(path, "data file")
    suffix = path.suffix.lower()
    modes = radius = None
    try:
        if suffix == ".npy":
            points = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if "images" in archive:
                    from gancore.images import image_dataset

                    return image_dataset(path.stem, archive["images"])
                if "x" not in archive:
                    raise GancoreError(f"{path}: an .npz needs points under key 'x' or images under 'images' (found: {', '.join(archive.files) or 'nothing'})")
                points = archive["x"]
                modes = archive["modes"] if "modes" in archive else None
                radius = float(archive["radius"]) if "radius" in archive else None
        elif suffix == ".csv":
            points = _read_csv(path)
        else:
            raise GancoreError(f"{path}: unsupported data file type {suffix or '(none)'}; use .npy, .npz or .csv")
    except GancoreError:
        raise
    except Exception as exc:  # numpy raises many types for unreadable files
        raise GancoreError(f"{path}: cannot read points ({one_line(exc) if str(exc).strip() else type(exc).__name__ + ': corrupt file'})") from None
    points = _check_points(np.asarray(points), path, "points")
    if modes is not None:
        modes = _check_points(np.asarray(modes), path, "modes")
        if modes.shape[1] != points.shape[1]:
            raise GancoreError(f"{path}: modes have {modes.shape[1]} columns but points have {points.shape[1]}")
        if radius is None or not math.isfinite(radius) or radius <= 0:
            raise GancoreError(f"{path}: with 'modes' give a positive finite 'radius' (the high-quality distance)")
    return Dataset(
        path.stem,
        torch.as_tensor(points, dtype=torch.float32),
        None if modes is None else torch.as_tensor(modes, dtype=torch.float32),
        radius,
    )


def dataset_from(data, modes=None, radius: float | None = None, scorer: Callable[[torch.Tensor], dict] | None = None) -> Dataset:
    """The training data gancore.fit was given: a tensor or numpy array (n, *shape), a map-style
    ``torch.utils.data.Dataset`` (items ``x`` or ``(x, label, ...)``) or a ``DataLoader`` of one
    (its dataset is used; sampling is the trainer's own, seeded). Optional ``modes`` (K, *shape)
    with ``radius`` (L2) make the mode metrics run, or ``scorer(samples) -> dict`` replaces them."""
    where = "gancore.fit data"
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    if isinstance(data, torch.utils.data.IterableDataset):
        raise GancoreError(f"{where}: an IterableDataset cannot be sampled by index (seeded, resumable); give a map-style Dataset or a tensor")
    if isinstance(data, torch.utils.data.Dataset):
        data = _materialized(data, where)
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if not isinstance(data, np.ndarray):
        raise GancoreError(f"{where}: give a tensor, a numpy array, a torch Dataset or DataLoader, or a file path; not {type(data).__name__}")
    if data.dtype.kind in "biu":  # 0..255 pictures trained as given would never match G's tanh range
        raise GancoreError(f"{where}: values of dtype {data.dtype} are used as given, not rescaled; give floats on G's output scale (images: x / 127.5 - 1 for [-1, 1])")
    points = _check_points(data, where, "points", samples_of_any_shape=True)
    centres = None
    if modes is not None:
        centres = _check_points(np.asarray(modes.detach().cpu() if isinstance(modes, torch.Tensor) else modes), "gancore.fit modes", "modes", samples_of_any_shape=True)
        centres = centres.reshape(len(centres), -1)
        if centres.shape[1] != math.prod(points.shape[1:]):
            raise GancoreError(f"gancore.fit modes: each mode has {centres.shape[1]} values but each sample has {math.prod(points.shape[1:])}")
        if radius is None or isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
            raise GancoreError(f"gancore.fit: with modes give radius, a positive number (the high-quality distance), not {radius!r}")
    elif radius is not None:
        raise GancoreError("gancore.fit: radius is the high-quality distance to the modes; give modes too")
    if scorer is not None and not callable(scorer):
        raise GancoreError(f"gancore.fit: scorer must be a function of samples returning a dict of metrics, not {type(scorer).__name__}")
    return Dataset(
        "user-data",
        torch.as_tensor(points),
        None if centres is None else torch.as_tensor(centres),
        None if radius is None else float(radius),
        scorer=scorer,
    )


def _materialized(dataset: torch.utils.data.Dataset, where: str) -> np.ndarray:
    """Every sample of a map-style Dataset stacked into one array (the first element of tuple items)."""
    try:
        n = len(dataset)
    except TypeError:
        raise GancoreError(f"{where}: the Dataset has no len(); give a map-style Dataset or a tensor") from None
    if n == 0:
        raise GancoreError(f"{where}: the Dataset is empty")
    first = _sample_of(dataset[0])
    # the samples, then their stacked copy
    require(2 * n * first.numel() * first.element_size(), torch.device("cpu"), f"{where}: {n} samples of shape {tuple(first.shape)}", "give a smaller Dataset")
    try:
        return torch.stack([first, *(_sample_of(dataset[i]) for i in range(1, n))]).numpy()
    except RuntimeError as error:
        raise GancoreError(f"{where}: the Dataset's samples cannot be stacked into one array ({one_line(error, 120)}); they must all have one shape") from None


def _sample_of(item) -> torch.Tensor:
    sample = item[0] if isinstance(item, (tuple, list)) else item
    return torch.as_tensor(np.asarray(sample.detach().cpu() if isinstance(sample, torch.Tensor) else sample))


def _read_csv(path: Path) -> np.ndarray:
    lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]  # -sig: a BOM is not part of the first row
    if lines and not _is_numeric_row(lines[0]):
        lines = lines[1:]  # a header
    if not lines:
        raise GancoreError(f"{path}: no data rows")
    rows = [line.split(",") for line in lines]
    width = len(rows[0])
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise GancoreError(f"{path}: data row {number} has {len(row)} columns, expected {width}")
        if not _is_numeric_row(",".join(row)):
            raise GancoreError(f"{path}: data row {number} has a non-numeric cell")
    return np.array([[float(cell) for cell in row] for row in rows])


def _is_numeric_row(line: str) -> bool:
    try:
        [float(cell) for cell in line.split(",")]
    except ValueError:
        return False
    return True


def _check_points(array: np.ndarray, path: Path | str, what: str, samples_of_any_shape: bool = False) -> np.ndarray:
    """``array`` as float32 rows (n, dim), or (n, *shape) with ``samples_of_any_shape``; refused
    when empty, not real numbers, not finite or beyond float32."""
    if array.ndim == 1:
        array = array[:, None]
    if (array.ndim != 2 and not samples_of_any_shape) or array.ndim < 2 or 0 in array.shape:
        rows = "(samples, ...)" if samples_of_any_shape else "2-D array (rows, columns)"
        raise GancoreError(f"{path}: {what} must be a non-empty {rows}; got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise GancoreError(f"{path}: {what} must be real numbers, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise GancoreError(f"{path}: {what} contain NaN or Inf; clean the file first")
    with np.errstate(over="ignore"):
        single = array.astype(np.float32)
    if not np.isfinite(single).all():
        raise GancoreError(f"{path}: {what} hold values beyond float32's range (±3.4e38); rescale the data")
    return single
