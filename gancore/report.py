"""Pictures of a run: samples over the true modes, and each mode's share of samples over time."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gancore.checkpoint import atomic_write  # noqa: E402
from gancore.data import Dataset  # noqa: E402


def _save(figure: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=110, bbox_inches="tight"))
    plt.close(figure)


def _project(points: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    return points if basis is None else points @ basis


def image_grid(images: torch.Tensor, columns: int = 8) -> np.ndarray:
    """(n, C, H, W) images in [−1, 1] -> one (rows·H, columns·W[, 3]) array in [0, 1] with 1-pixel gaps."""
    images = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy().transpose(0, 2, 3, 1)
    n, height, width, channels = images.shape
    rows = math.ceil(n / columns)
    grid = np.ones((rows * (height + 1) - 1, columns * (width + 1) - 1, channels))
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * (height + 1): row * (height + 1) + height, column * (width + 1): column * (width + 1) + width] = image
    return grid if channels == 3 else grid[..., 0]


def plot_samples(path: Path, samples: torch.Tensor, dataset: Dataset, title: str) -> None:
    """Vectors: scatter (2-D), histogram (1-D) or a 2-D PCA projection (higher-D) of samples over
    the data and the mode centres. Images: a grid of samples beside a grid of data."""
    if len(dataset.shape) == 3:
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4.8))
        draw_samples(left, samples, dataset, "samples")
        draw_samples(right, dataset.points, dataset, "data")
        figure.suptitle(title, fontsize=9)
    else:
        figure, axis = plt.subplots(figsize=(5, 5) if dataset.dim > 1 else (6, 3.5))
        draw_samples(axis, samples, dataset, title)
    _save(figure, path)


def draw_samples(axis: plt.Axes, samples: torch.Tensor, dataset: Dataset, title: str, legend: bool = True) -> None:
    """Draw what :func:`plot_samples` shows into ``axis`` (e.g. one panel of a grid of runs)."""
    if len(dataset.shape) == 3:
        axis.imshow(image_grid(samples[:64]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
        return
    data = dataset.points[:5000].cpu().numpy()
    fake = samples.detach().cpu().numpy()
    modes = None if dataset.modes is None else dataset.modes.cpu().numpy()
    if dataset.dim == 1:
        bins = np.linspace(min(data.min(), fake.min()), max(data.max(), fake.max()), 80)
        axis.hist(data[:, 0], bins=bins, alpha=0.5, density=True, label="data", color="tab:blue")
        axis.hist(fake[:, 0], bins=bins, alpha=0.5, density=True, label="samples", color="tab:orange")
        if modes is not None:
            for centre in modes[:, 0]:
                axis.axvline(centre, color="black", lw=0.8, ls="--")
    else:
        basis = None
        if dataset.dim > 2:
            centred = data - data.mean(axis=0)
            components = np.linalg.svd(centred, full_matrices=False)[2]
            # fewer than two data points span no plane: show the first two coordinates instead
            basis = components[:2].T if len(components) >= 2 else np.eye(dataset.dim)[:, :2]
            axis.set_xlabel("PC 1 of the data")
            axis.set_ylabel("PC 2 of the data")
        axis.scatter(*_project(data, basis).T, s=2, alpha=0.25, label="data", color="tab:blue")
        axis.scatter(*_project(fake, basis).T, s=2, alpha=0.5, label="samples", color="tab:orange")
        if modes is not None:
            axis.scatter(*_project(modes, basis).T, marker="x", s=40, color="black", label="modes")
        axis.set_aspect("equal", adjustable="datalim")
    if legend:
        axis.legend(loc="upper right", fontsize=8, markerscale=3)
    axis.set_title(title, fontsize=9)


def plot_mode_shares(path: Path, history: list[dict], title: str) -> None:
    """Each mode's share of the samples at every evaluation, stacked: mode hopping made visible.

    For the mixtures: the samples nearest to each mode (light) and, darker within it, the part
    that is high quality. With more than 25 modes: modes captured over training, and the final
    histogram.
    """
    rows = [entry for entry in history if "mode_counts" in entry]
    if not rows:
        return
    if rows[-1]["n_modes"] > 25:
        _plot_many_modes(path, rows, title)
        return
    steps = np.array([entry["step"] for entry in rows])
    n_samples = np.array([entry["n_samples"] for entry in rows], dtype=float)[:, None]
    nearest = np.array([entry.get("nearest_counts", entry["mode_counts"]) for entry in rows], dtype=float) / n_samples
    high_quality = np.array([entry["mode_counts"] for entry in rows], dtype=float) / n_samples
    n_modes = nearest.shape[1]
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, n_modes))
    figure, axis = plt.subplots(figsize=(7, 3.5))
    if len(steps) == 1:
        labels = [f"mode {i}" for i in range(n_modes)]
        axis.bar(labels, nearest[0], color=colours, alpha=0.45)
        axis.bar(labels, high_quality[0], color=colours)
    else:
        axis.stackplot(steps, nearest.T, colors=colours, alpha=0.45, labels=[f"mode {i}" for i in range(n_modes)])
        bottoms = np.vstack([np.zeros(len(steps)), np.cumsum(nearest, axis=1)[:, :-1].T])
        for mode in range(n_modes):
            axis.fill_between(steps, bottoms[mode], bottoms[mode] + high_quality[:, mode], color=colours[mode], lw=0)
        axis.set_xlabel("step")
        axis.set_xlim(steps[0], steps[-1])
        if n_modes <= 25:
            axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, ncol=1 + n_modes // 13)
    axis.set_ylim(0, 1)
    axis.set_ylabel("share of samples per nearest mode\n(dark: high quality)")
    axis.set_title(title, fontsize=9)
    _save(figure, path)


def _plot_many_modes(path: Path, rows: list[dict], title: str) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot([r["step"] for r in rows], [r["modes_captured"] for r in rows], marker="o")
    left.set_xlabel("step")
    left.set_ylabel(f"modes captured (of {rows[-1]['n_modes']})")
    left.set_ylim(0, rows[-1]["n_modes"] * 1.05)
    counts = np.sort(np.array(rows[-1]["mode_counts"]))[::-1]
    right.bar(np.arange(len(counts)), counts, width=1.0, color="tab:blue")
    right.axhline(counts.sum() / len(counts), color="black", ls="--", lw=0.8, label="uniform")
    right.set_xlabel("modes, most frequent first")
    right.set_ylabel("samples")
    right.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    _save(figure, path)
