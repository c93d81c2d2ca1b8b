"""The pictures: samples_<dataset>.png, one panel of samples per remedy."""
from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gancore.checkpoint import atomic_write
from gancore.config import CORE
from gancore.data import Dataset, load_dataset

from benchmarks.modes.presets import PICTURE_IMAGES, PICTURE_SEED
from benchmarks.modes.run import picture_view

if TYPE_CHECKING:
    from benchmarks.modes.rows import Row


def draw_dataset(path: Path, dataset: str, rows: list[Row]) -> bool:
    """One panel per remedy: samples of one seed (0 if stored) over the data, or for images a grid of
    the first samples. False if nothing to draw."""
    import matplotlib.pyplot as plt

    from gancore.report import draw_samples

    panels = []
    for row in rows:
        record = next((r for r in row.records if r["seed"] == PICTURE_SEED), None) or min(row.records, key=lambda r: r["seed"])
        samples_path = Path(record["_path"]).with_suffix(".samples.npy")
        if samples_path.is_file():
            panels.append((row, record, torch.from_numpy(np.load(samples_path, allow_pickle=False))))
    if not panels:
        return False
    if panels[0][2].dim() == 4:
        return _draw_image_panels(path, dataset, panels)
    columns = min(4, len(panels))
    rows_n = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows_n, columns, figsize=(3.4 * columns, 3.5 * rows_n), squeeze=False)
    cache: dict = {}
    for index, (row, record, samples) in enumerate(panels):
        axis = axes[index // columns][index % columns]
        view = _dataset_view(record, cache)
        metrics = record["metrics"]
        title = f"{_panel_name(row, record, panels)}\n{metrics['modes_captured']}/{metrics['n_modes']} modes, HQ {metrics['hq_percent']:.1f}%"
        if len(samples):
            draw_samples(axis, samples, view, title, legend=index == 0)
        else:
            axis.set_title(title + "\nno finite sample", fontsize=9)
        if _load_cached(record, cache).dim > 2:
            axis.axhline(view.radius, color="grey", lw=0.8, ls=":")
            axis.set_xlabel("mean coordinate (which mode)")
            axis.set_ylabel(f"{'L∞' if view.hq_norm == 'linf' else 'L2'} distance to nearest mean")
    for index in range(len(panels), rows_n * columns):
        axes[index // columns][index % columns].axis("off")
    extra = "; dotted line: the HQ radius" if any(_load_cached(record, cache).dim > 2 for _, record, _ in panels) else ""
    figure.suptitle(f"{dataset}: samples of each remedy {_steps_phrase(panels)} (orange) over the data (blue){extra}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / figure.get_figheight()))  # the suptitle's line, clear of the first titles
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    return True


def _panel_steps(record: dict) -> Any:
    return record.get("settings", {}).get(CORE, {}).get("steps", "?")


def _steps_phrase(panels: list[tuple[Row, dict, torch.Tensor]]) -> str:
    steps = {_panel_steps(record) for _, record, _ in panels}
    return f"after {steps.pop()} steps" if len(steps) == 1 else "after the steps in its title"


PANEL_NAME_CHARS = 24  # a longer remedy name puts its seed on the next line, clear of the next panel's title
PANEL_LINE_CHARS = 44  # what one line of a panel's title holds at its font size, clear of the next panel


def _panel_name(row: Row, record: dict, panels: list[tuple[Row, dict, torch.Tensor]]) -> str:
    """Remedy and seed; and its steps when the panels' steps differ."""
    steps = "" if len({_panel_steps(r) for _, r, _ in panels}) == 1 else f", {_panel_steps(record)} steps"
    gap = "\n" if len(row.remedy) > PANEL_NAME_CHARS else " "
    return f"{_wrapped(row.remedy)}{gap}(seed {record['seed']}{steps})"


def _wrapped(remedy: str) -> str:
    """``remedy`` in lines of at most PANEL_LINE_CHARS, broken after a ``+`` or ``,`` (names have no spaces)."""
    lines = [""]
    for piece in re.findall(r"[^+,]*[+,]?", remedy):
        if lines[-1] and len(lines[-1]) + len(piece) > PANEL_LINE_CHARS:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _draw_image_panels(path: Path, dataset: str, panels: list[tuple[Row, dict, torch.Tensor]]) -> bool:
    """samples_<dataset>.png of an image dataset: per remedy a grid of its stored samples (up to PICTURE_IMAGES)."""
    import matplotlib.pyplot as plt

    from gancore.report import draw_samples

    columns = min(4, len(panels))
    rows_n = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows_n, columns, figsize=(3.4 * columns, 3.7 * rows_n), squeeze=False)
    for index, (row, record, samples) in enumerate(panels):
        axis = axes[index // columns][index % columns]
        metrics = record["metrics"]
        kl = metrics.get("reverse_kl")
        title = f"{_panel_name(row, record, panels)}\n{metrics['modes_captured']}/{metrics['n_modes']} modes, KL {'n/a' if kl is None else f'{kl:.2f}'}"
        if len(samples):
            draw_samples(axis, samples, Dataset(dataset, samples[:1]), title, legend=False)
        else:
            axis.set_title(title + "\nno finite sample", fontsize=9)
            axis.axis("off")
    for index in range(len(panels), rows_n * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle(f"{dataset}: the first {PICTURE_IMAGES} samples of each remedy {_steps_phrase(panels)}", fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    return True


def _load_cached(record: dict, cache: dict) -> Dataset:
    train = record.get("settings", {}).get(CORE, {})
    key = (record["dataset"], train.get("n_train", 20000), record["seed"])
    if key not in cache:
        cache[key] = load_dataset(record["dataset"], "", key[1], record["seed"])
    return cache[key]


def _dataset_view(record: dict, cache: dict) -> Dataset:
    """The dataset as :func:`picture_view` shows it (itself up to 2-D)."""
    data = _load_cached(record, cache)
    if data.dim <= 2 or data.modes is None:
        return data
    points = picture_view(data.points[:5000], data.modes, data.hq_norm)
    modes = torch.stack([data.modes.mean(dim=1), torch.zeros(len(data.modes))], dim=1)
    return Dataset(data.name, points, modes, data.radius, data.hq_norm)
