import numpy as np
import pytest
import torch

from gancore.data import HD1200_SHIFTS, bimodal1d, grid25, hd1200, load_dataset, load_points_file, ring8
from gancore.errors import GancoreError


def test_ring8_has_eight_distinct_modes_on_radius_two():
    modes = ring8(10, np.random.default_rng(0)).modes
    assert modes.shape == (8, 2)
    assert torch.allclose(modes.norm(dim=1), torch.full((8,), 2.0))
    # endpoint excluded: the smallest pairwise distance is the chord of 2π/8, no repeated mode
    distances = torch.cdist(modes, modes) + 10 * torch.eye(8)
    assert distances.min() == pytest.approx(2 * 2 * np.sin(np.pi / 8), abs=1e-5)


def test_grid25_modes_and_spread():
    data = grid25(20000, np.random.default_rng(1))
    assert sorted(set(data.modes[:, 0].tolist())) == [-4, -2, 0, 2, 4]
    offsets = data.points - data.modes[torch.cdist(data.points, data.modes).argmin(1)]
    assert offsets.std().item() == pytest.approx(0.05, rel=0.05)
    assert data.radius == pytest.approx(0.15)


def test_hd1200_follows_pacgans_construction():
    data = hd1200(4000, np.random.default_rng(2))
    assert data.points.shape == (4000, 1200)
    tail = data.points[:, 700:]
    # the last 500 coordinates are exactly the mode's shift
    assert torch.equal(tail, tail[:, :1].expand(-1, 500))
    assert set(tail[:, 0].tolist()) == set(HD1200_SHIFTS)
    head = data.points[:, :700] - tail[:, :1]
    assert head.std().item() == pytest.approx(1.0, rel=0.02)
    assert data.hq_norm == "linf" and data.radius == 10.0


def test_bimodal1d_is_two_separated_gaussians():
    data = bimodal1d(10000, np.random.default_rng(3))
    assert data.modes.flatten().tolist() == [-5.0, 5.0]
    assert (data.points > 0).float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_same_seed_same_points():
    assert torch.equal(load_dataset("ring8", "", 100, 7).points, load_dataset("ring8", "", 100, 7).points)
    assert not torch.equal(load_dataset("ring8", "", 100, 7).points, load_dataset("ring8", "", 100, 8).points)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(GancoreError, match="unknown dataset 'ring9'.*ring8"):
        load_dataset("ring9", "", 10, 0)


def test_weighted_sampling_follows_the_weights():
    data = load_dataset("bimodal1d", "", 1000, 0)
    weights = (data.points[:, 0] > 0).float()
    drawn = data.sample(500, torch.Generator().manual_seed(0), weights / weights.sum())
    assert (drawn > 0).all()


def test_point_files_load(tmp_path):
    points = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "p.npy", points)
    np.savez(tmp_path / "p.npz", x=points, modes=points[:2], radius=0.5)
    (tmp_path / "p.csv").write_text("a,b,c\n" + "\n".join(",".join(map(str, row)) for row in points))
    for name in ("p.npy", "p.npz", "p.csv"):
        loaded = load_points_file(tmp_path / name)
        assert loaded.points.shape == (50, 3)
        assert np.allclose(loaded.points.numpy(), points, atol=1e-6)
    with_modes = load_points_file(tmp_path / "p.npz")
    assert with_modes.modes.shape == (2, 3) and with_modes.radius == 0.5


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", "", "no data rows"),
        ("header_only.csv", "x,y\n", "no data rows"),
        ("ragged.csv", "1,2\n3\n", "row 2 has 1 columns, expected 2"),
        ("text.csv", "1,2\n3,abc\n", "non-numeric"),
        ("nan.csv", "1,2\nnan,4\n", "NaN or Inf"),
        ("notes.txt", "1,2\n", "unsupported data file type .txt"),
        ("garbage.npy", "not numpy", "cannot read points"),
    ],
)
def test_malformed_point_files_are_one_line_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(GancoreError, match=message) as error:
        load_points_file(tmp_path / name)
    assert "\n" not in str(error.value)


def test_npz_without_points_or_radius(tmp_path):
    np.savez(tmp_path / "a.npz", y=np.zeros((3, 2)))
    with pytest.raises(GancoreError, match="key 'x'"):
        load_points_file(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=np.zeros((3, 2)), modes=np.zeros((1, 2)))
    with pytest.raises(GancoreError, match="radius"):
        load_points_file(tmp_path / "b.npz")
    np.save(tmp_path / "c.npy", np.zeros((0, 2)))
    with pytest.raises(GancoreError, match="non-empty 2-D"):
        load_points_file(tmp_path / "c.npy")
