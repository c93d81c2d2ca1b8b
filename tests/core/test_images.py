import math

import numpy as np
import pytest
import torch
from PIL import Image

from gancore.data import load_dataset
from gancore.errors import GancoreError
from gancore.images import (
    digit_classifier,
    digit_mode_coverage,
    digit_source,
    image_dataset,
    load_image_folder,
    stacked_digits,
    train_digit_classifier,
)
from gancore.models import ConvGenerator, Critique, Discriminator


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GANCORE_CACHE", str(tmp_path_factory.getbasetemp() / "gancore-cache"))


def test_digit_source_split_is_disjoint_and_fixed():
    train_x, train_y, test_x, test_y = digit_source()
    assert len(train_x) + len(test_x) == 1797 and len(test_x) == int(0.3 * 1797)
    flat_train = {tuple(x.flatten().tolist()) for x in train_x}
    overlap = sum(tuple(x.flatten().tolist()) in flat_train for x in test_x)
    assert overlap < 5  # the source has a few duplicate images, never shared rows by index
    assert 0 <= train_x.min() and train_x.max() <= 1


def test_classifier_reaches_97_percent_on_held_out_digits():
    # the cache is private to this test session, so this is a fresh training
    _, accuracy = digit_classifier()
    assert accuracy >= 0.97


def test_classifier_training_ignores_the_callers_thread_count_and_restores_it():
    weights, before = {}, torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model, _ = train_digit_classifier(epochs=2)
            assert torch.get_num_threads() == threads
            weights[threads] = torch.cat([p.flatten() for p in model.parameters()])
    finally:
        torch.set_num_threads(before)  # later tests keep the session's thread count
    assert torch.equal(weights[1], weights[2])


def test_real_stacked_digits_cover_all_1000_modes_and_a_collapsed_generator_one():
    data = stacked_digits(26000, np.random.default_rng(1))
    assert data.points.shape == (26000, 3, 16, 16) and data.eval_samples == 26000
    assert -1 <= data.points.min() and data.points.max() <= 1
    real = data.score(data.points)
    assert real["modes_captured"] == real["n_modes"] == 1000
    # 26 samples per mode on average: the empirical histogram's KL is ≈ (K−1)/(2N) ≈ 0.02, plus classifier errors
    assert real["reverse_kl"] < 0.08
    collapsed = data.score(data.points[:1].expand(5000, -1, -1, -1))
    assert collapsed["modes_captured"] == 1
    assert collapsed["reverse_kl"] == pytest.approx(math.log(1000))


def test_mode_metric_counts_channel_triples():
    classifier, _ = digit_classifier()
    train_x, train_y, _, _ = digit_source()
    picks = [int((train_y == digit).nonzero()[0]) for digit in (3, 1, 4)]
    sample = torch.nn.functional.interpolate(train_x[picks][None], size=16, mode="bilinear") * 2 - 1
    scores = digit_mode_coverage(sample, classifier)
    assert scores["mode_counts"][314] == 1 and scores["modes_captured"] == 1


def test_digits_dataset_is_one_channel_ten_modes():
    data = load_dataset("digits", "", 3000, 0, image_size=8)
    assert data.shape == (1, 8, 8)
    assert data.score(data.points)["modes_captured"] == 10


@pytest.mark.parametrize("side, channels", [(8, 1), (16, 3), (32, 3)])
@pytest.mark.parametrize("norm", ["none", "batch", "spectral"])
def test_dcgan_networks_map_noise_to_images_and_images_to_critiques(side, channels, norm):
    G = ConvGenerator(7, (channels, side, side), 8, "batch" if norm == "batch" else "none")
    D = Discriminator.conv((channels, side, side), 8, norm)
    images = G(torch.randn(5, 7))
    assert images.shape == (5, channels, side, side) and images.abs().max() <= 1
    out = D(images)
    assert isinstance(out, Critique) and out.logits.shape == (5,)
    assert out.features.shape == (5, 8 * 2 ** (int(math.log2(side)) - 3) * 16)


def test_image_folders_and_arrays(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    data = load_image_folder(tmp_path)
    assert data.shape == (3, 16, 16) and -1 <= data.points.min() and data.points.max() <= 1
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(GancoreError, match="differ in size"):
        load_image_folder(tmp_path)
    with pytest.raises(GancoreError, match="power-of-two"):
        image_dataset("x", np.zeros((3, 12, 12), dtype=np.uint8))
    with pytest.raises(GancoreError, match=r"uint8 or floats in \[0, 1\]"):
        image_dataset("x", np.full((3, 8, 8), 2.0))
    assert image_dataset("x", np.zeros((3, 8, 8), dtype=np.uint8)).points.eq(-1).all()


def test_training_on_stacked_digits_end_to_end(make_trainer):
    trainer = make_trainer(train={"dataset": "stacked-digits", "n_train": 500, "steps": 3, "eval_samples": 300, "image_size": 8})
    assert isinstance(trainer.models.G, ConvGenerator)
    summary = trainer.fit()
    assert summary["n_modes"] == 1000 and summary["n_samples"] == 300
    assert 1 <= summary["modes_captured"] <= 300


def test_dcgan_needs_image_data(make_trainer):
    with pytest.raises(GancoreError, match="train.model=dcgan needs image data"):
        make_trainer(train={"model": "dcgan"})
