"""WGAN: the Wasserstein critic, kept Lipschitz by clipping its weights.

Arjovsky, Chintala & Bottou (2017), "Wasserstein GAN", Algorithm 1 (martinarjovsky/WassersteinGAN).
D estimates the Wasserstein-1 distance between data and model, which needs D K-Lipschitz; the
paper enforces it crudely by keeping every weight in a box:

    repeat n_critic times (n_critic = 5):
        x ~ data, z ~ p(z)
        L_D = mean D(G(z)) − mean D(x)
        RMSProp(lr = 5e-5) step on D
        w ← clip(w, −c, c) for every parameter w of D          (c = 0.01)
    G: minimize −mean D(G(z)),  RMSProp(lr = 5e-5)

This plugin suggests the ``wasserstein`` loss and 5 critic steps (the user's explicit settings
win) and clips every parameter D's optimizer trains after each D update. The paper's optimizer
is RMSProp (momentum-based optimizers made its critic unstable); the core trains both players
with Adam. Adam with β₁ = 0 is RMSProp with bias correction, and the official code's RMSProp
keeps PyTorch's α = 0.99 (martinarjovsky/WassersteinGAN ``main.py:161``), so the closest run is
``--set train.betas_d=0,0.99 --set train.betas_g=0,0.99 --set train.lr_d=5e-5 --set train.lr_g=5e-5``
(with ``train.lr_decay = "none"``: the paper's rate is constant).
"""
from __future__ import annotations

import torch

from gancore import GancoreError, hookimpl


class Wgan:
    """WGAN: Wasserstein loss, 5 critic steps, D's weights clipped to [−c, c] (Arjovsky et al. 2017)."""

    data_parallel = ("exact", "the critic's loss is a mean over samples and its weights are clipped identically on every rank")

    incompatible_with = ("wgan-gp",)

    def __init__(self) -> None:
        self.clip = 0.01

    @hookimpl
    def gancore_add_options(self, options):
        options.add("clip", float, 0.01, "c: every parameter of D is clipped to [−c, c] after each D update (the paper: 0.01)", min=0)

    @hookimpl
    def gancore_configure(self, name, config, options):
        if options.clip <= 0:
            raise GancoreError(f"wgan.clip={options.clip:g}: must be positive (the paper: 0.01)")
        self.clip = options.clip
        config.suggest(name, loss="wasserstein", n_critic=5)

    @hookimpl
    def gancore_after_optimizer_step(self, trainer, player):
        if player == "D":
            with torch.no_grad():
                for p in trainer.models.parameters("D"):
                    p.clamp_(-self.clip, self.clip)
