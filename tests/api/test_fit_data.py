"""gancore.fit's data: tensors, arrays, Datasets and DataLoaders train alike; modes or a scorer score them."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import gancore
from gancore import GancoreError
from gancore.metrics import mode_coverage

SETTINGS = {"steps": 6, "batch_size": 16, "device": "cpu", "z_dim": 4, "g_width": 16, "d_width": 16, "eval_every": 3, "eval_samples": 200, "progress": False}
POINTS = torch.randn(100, 2)


def params(result):
    return [p.detach() for name in ("G", "D") for p in result.models[name].parameters()]


def test_a_dataset_and_a_dataloader_train_as_their_tensor():
    reference = gancore.fit(data=POINTS, **SETTINGS)
    labelled = gancore.fit(data=TensorDataset(POINTS, torch.arange(100)), **SETTINGS)
    settings = {k: v for k, v in SETTINGS.items() if k != "batch_size"}
    loader = DataLoader(TensorDataset(POINTS), batch_size=16, shuffle=True, num_workers=0)
    loaded = gancore.fit(data=loader, **settings)
    assert loaded.trainer.train.batch_size == 16  # the loader's batch size is the default
    for result in (labelled, loaded):
        assert all(torch.equal(a, b) for a, b in zip(params(result), params(reference)))
        assert result.summary == reference.summary


class Squares(Dataset):
    """A map-style dataset of numpy samples (not tensors), one shape each."""

    def __len__(self):
        return 50

    def __getitem__(self, i):
        return np.full((1, 4, 4), i / 50, dtype=np.float32)


def test_a_dataset_of_numpy_images_trains_with_the_builtin_nets():
    result = gancore.fit(data=Squares(), **{**SETTINGS, "model": "mlp"})
    assert result.sample(3).shape == (3, 1, 4, 4)


class Stream(IterableDataset):
    def __iter__(self):
        yield from POINTS


class Ragged(Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(i + 1)


class Empty(Dataset):
    def __len__(self):
        return 0


@pytest.mark.parametrize("data, message", [
    (Stream(), r"^gancore.fit data: an IterableDataset cannot be sampled by index \(seeded, resumable\); give a map-style Dataset or a tensor$"),
    (Ragged(), r"^gancore.fit data: the Dataset's samples cannot be stacked into one array \(.*\); they must all have one shape$"),
    (Empty(), r"^gancore.fit data: the Dataset is empty$"),
])
def test_datasets_that_cannot_be_sampled_are_refused(data, message):
    with pytest.raises(GancoreError, match=message):
        gancore.fit(data=data, **SETTINGS)


def test_modes_and_radius_score_user_data_by_the_protocol():
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    data = centres[torch.arange(200) % 2] + 0.05 * torch.randn(200, 2)
    result = gancore.fit(data=data, modes=centres, radius=0.15, **SETTINGS)
    samples = result.trainer.sample(200, result.trainer.evaluation_generator())
    expected = mode_coverage(samples, centres, 0.15)
    assert {k: result.summary[k] for k in expected} == expected
    assert [m["step"] for m in result.history] == [3, 6] and all("modes_captured" in m for m in result.history)


def test_modes_of_images_are_compared_flattened():
    images = torch.rand(40, 1, 4, 4)
    result = gancore.fit(data=images, modes=images[:3], radius=100.0, **{**SETTINGS, "model": "mlp"})
    assert result.summary["n_modes"] == 3 and result.summary["hq_percent"] == 100.0


def test_a_scorer_replaces_the_mode_metrics(tmp_path):
    seen = []

    def scorer(samples):
        seen.append(samples.shape)
        return {"mean_x": float(samples[:, 0].mean())}

    result = gancore.fit(data=POINTS, scorer=scorer, run_dir=tmp_path / "run", **SETTINGS)
    assert seen[:2] == [(200, 2), (200, 2)] and "mean_x" in result.summary and "modes_captured" not in result.summary
    assert (tmp_path / "run" / "samples.png").is_file()
    with pytest.raises(GancoreError, match=r"^gancore.fit: scorer must be a function of samples returning a dict of metrics, not int$"):
        gancore.fit(data=POINTS, scorer=3, **SETTINGS)


def test_a_dataset_too_large_for_memory_is_refused_before_it_is_read(monkeypatch):
    read = []

    class Counted(TensorDataset):
        def __getitem__(self, i):
            read.append(i)
            return super().__getitem__(i)

    monkeypatch.setattr("gancore.memory.available_bytes", lambda device: 1000)
    with pytest.raises(GancoreError, match=r"^gancore.fit data: 100 samples of shape \(2,\) needs at least .* but cpu memory has .* free; give a smaller Dataset$"):
        gancore.fit(data=Counted(POINTS), **SETTINGS)
    assert read == [0]  # only the first sample, for its shape


def test_user_nets_on_a_dataset_resume_bit_identically(tmp_path):
    def nets():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    data = TensorDataset(POINTS)
    gancore.fit(*nets(), data, run_dir=tmp_path / "run", plugins=["replay"], **SETTINGS)
    resumed = gancore.fit(*nets(), data, run_dir=tmp_path / "run", resume=True, plugins=["replay"], **{**SETTINGS, "steps": 12})
    straight = gancore.fit(*nets(), data, plugins=["replay"], **{**SETTINGS, "steps": 12})
    assert resumed.summary == straight.summary and resumed.history == straight.history
    assert all(torch.equal(a, b) for a, b in zip(params(resumed), params(straight)))
    with pytest.raises(GancoreError, match=r"was started with networks \{'D': 'Sequential', 'G': 'Sequential'\}, this call gives networks \(none\)"):
        gancore.fit(data=data, run_dir=tmp_path / "run", resume=True, plugins=["replay"], **SETTINGS)
