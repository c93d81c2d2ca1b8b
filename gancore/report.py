"""Pictures of a run: samples over the true modes, and each mode's share of samples over time."""
from __future__ import annotations

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


def plot_samples(path: Path, samples: torch.Tensor, dataset: Dataset, title: str) -> None:
    """Scatter (2-D), histogram (1-D) or a 2-D PCA projection (higher-D) of samples over the data."""
    data = dataset.points[:5000].cpu().numpy()
    fake = samples.detach().cpu().numpy()
    modes = None if dataset.modes is None else dataset.modes.cpu().numpy()
    figure, axis = plt.subplots(figsize=(5, 5) if dataset.dim > 1 else (6, 3.5))
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
            basis = np.linalg.svd(centred, full_matrices=False)[2][:2].T
            axis.set_xlabel("PC 1 of the data")
            axis.set_ylabel("PC 2 of the data")
        axis.scatter(*_project(data, basis).T, s=2, alpha=0.25, label="data", color="tab:blue")
        axis.scatter(*_project(fake, basis).T, s=2, alpha=0.5, label="samples", color="tab:orange")
        if modes is not None:
            axis.scatter(*_project(modes, basis).T, marker="x", s=40, color="black", label="modes")
        axis.set_aspect("equal", adjustable="datalim")
    axis.legend(loc="upper right", fontsize=8, markerscale=3)
    axis.set_title(title, fontsize=9)
    _save(figure, path)


def plot_mode_shares(path: Path, history: list[dict], title: str) -> None:
    """Stacked share of samples that are high quality for each mode at each evaluation: mode hopping made visible."""
    rows = [entry for entry in history if "mode_counts" in entry]
    if not rows:
        return
    steps = np.array([entry["step"] for entry in rows])
    counts = np.array([entry["mode_counts"] for entry in rows], dtype=float)
    shares = counts / np.array([entry["n_samples"] for entry in rows], dtype=float)[:, None]
    figure, axis = plt.subplots(figsize=(7, 3.5))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, counts.shape[1]))
    if len(steps) == 1:
        axis.bar([f"mode {i}" for i in range(counts.shape[1])], shares[0], color=colours)
        axis.set_ylabel("share of samples (HQ)")
    else:
        axis.stackplot(steps, shares.T, colors=colours, labels=[f"mode {i}" for i in range(counts.shape[1])])
        axis.set_xlabel("step")
        axis.set_ylabel("share of samples (HQ)")
        # auto-scaled: a collapsed generator hops between modes at a low HQ share, which must stay visible
        axis.set_ylim(0, min(1.0, max(shares.sum(axis=1).max() * 1.1, 0.01)))
        axis.set_xlim(steps[0], steps[-1])
    if len(steps) > 1 and counts.shape[1] <= 25:
        axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, ncol=1 + counts.shape[1] // 13)
    axis.set_title(title, fontsize=9)
    _save(figure, path)
