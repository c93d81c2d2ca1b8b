import math

import numpy as np
import pytest
import torch

from gancore.data import grid25, hd1200, ring8
from gancore.metrics import mode_coverage

# mass of a 2-D isotropic Gaussian within 3 std: 1 - exp(-9/2)
CEILING_2D = 100 * (1 - math.exp(-4.5))


@pytest.mark.parametrize("make, n_modes", [(ring8, 8), (grid25, 25)])
def test_exact_sampler_scores_every_mode_at_the_gaussian_ceiling(make, n_modes):
    dataset = make(2500, np.random.default_rng(123))
    scores = mode_coverage(dataset.points, dataset.modes, dataset.radius)
    assert scores["modes_captured"] == n_modes
    # binomial standard error at 2500 samples is 0.2%; allow 4 of them
    assert scores["hq_percent"] == pytest.approx(CEILING_2D, abs=0.8)
    assert scores["reverse_kl"] < 0.02


def test_exact_hd1200_sampler_is_fully_high_quality():
    dataset = hd1200(2500, np.random.default_rng(5))
    scores = mode_coverage(dataset.points, dataset.modes, dataset.radius, dataset.hq_norm)
    assert scores["modes_captured"] == 10
    assert scores["hq_percent"] == 100.0


def test_one_mode_sampler_scores_one_mode_and_log_k_kl():
    dataset = ring8(10, np.random.default_rng(0))
    samples = dataset.modes[3] + 0.02 * torch.randn(2500, 2, generator=torch.Generator().manual_seed(0))
    scores = mode_coverage(samples, dataset.modes, dataset.radius)
    assert scores["modes_captured"] == 1
    assert scores["mode_counts"][3] == sum(scores["mode_counts"]) > 2400
    assert scores["nearest_counts"] == [0, 0, 0, 2500, 0, 0, 0, 0]
    assert scores["reverse_kl"] == pytest.approx(math.log(8))


def test_samples_far_from_every_mode_score_zero():
    dataset = grid25(10, np.random.default_rng(0))
    scores = mode_coverage(torch.full((2500, 2), 1.0), dataset.modes, dataset.radius)
    assert scores["hq_percent"] == 0.0
    assert scores["modes_captured"] == 0
    assert scores["reverse_kl"] is None
    assert sum(scores["nearest_counts"]) == 2500  # where the mass is, even when none of it is HQ


def test_radius_is_measured_in_the_datasets_norm():
    modes = torch.zeros(1, 3)
    sample = torch.tensor([[0.9, 0.9, 0.9]])  # L∞ 0.9, L2 1.56
    assert mode_coverage(sample, modes, 1.0, "linf")["hq_percent"] == 100.0
    assert mode_coverage(sample, modes, 1.0, "l2")["hq_percent"] == 0.0


def test_non_finite_samples_score_zero_instead_of_crashing():
    dataset = ring8(10, np.random.default_rng(0))
    samples = torch.full((100, 2), float("nan"))
    assert mode_coverage(samples, dataset.modes, dataset.radius)["hq_percent"] == 0.0
