"""Instance noise: Gaussian noise on everything D sees, annealed to zero.

Sønderby et al. (2016) and Arjovsky & Bottou (2017): real and fake distributions with
disjoint supports give D a perfect, uninformative win; adding the same noise to both makes
their supports overlap, so D's gradient stays informative for G. The noise is annealed
linearly so the model fits the clean data in the end.

    σ_t = std · max(0, 1 − t / anneal_steps)
    D sees x + σ_t ε (real) and G(z) + σ_t ε' (fake), in D's updates and in G's.
"""
from __future__ import annotations

import torch

from gancore import hookimpl


class InstanceNoise:
    """Annealed Gaussian noise on D's real and fake inputs (Sønderby et al. 2016)."""

    data_parallel = ("local", "the noise is drawn per rank from the shared training stream, so ranks add the same noise values to different samples")

    def __init__(self) -> None:
        self.std = 0.0
        self.anneal_steps = 1

    @hookimpl
    def gancore_add_options(self, options):
        options.add("std", float, 0.1, "noise standard deviation at step 0", min=0)
        options.add("anneal_steps", int, 0, "steps over which the noise decays to zero (0: the whole run)", min=0)

    @hookimpl
    def gancore_configure(self, config, options):
        self.std = options.std
        self.anneal_steps = options.anneal_steps or max(config.train.steps, 1)

    def scale(self, step: int) -> float:
        return self.std * max(0.0, 1.0 - step / self.anneal_steps)

    @hookimpl
    def gancore_discriminator_batch(self, trainer, batch):
        sigma = self.scale(batch.step)
        if sigma == 0.0:
            return
        batch.fake = batch.fake + sigma * self._noise_like(batch.fake, trainer.generator)
        if batch.real is not None:
            batch.real = batch.real + sigma * self._noise_like(batch.real, trainer.generator)

    @staticmethod
    def _noise_like(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(tensor.shape, generator=generator, device=tensor.device, dtype=tensor.dtype)
