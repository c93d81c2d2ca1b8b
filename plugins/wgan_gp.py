"""WGAN-GP: the Wasserstein critic with a gradient penalty instead of weight clipping.

Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville (2017), "Improved Training of Wasserstein
GANs", Algorithm 1 (igul222/improved_wgan_training). D is a critic for the Wasserstein-1
distance, which needs it 1-Lipschitz; instead of clipping its weights (plugin ``wgan``), its
gradient norm is pushed to 1 on points between real and fake samples:

    repeat n_critic times (n_critic = 5):
        x ~ data, z ~ p(z), ε_i ~ U[0, 1] one per sample
        x̂_i = ε_i x_i + (1 − ε_i) G(z)_i
        L_D = mean D(G(z)) − mean D(x)  +  λ · mean_i (‖∇_x̂ D(x̂)_i‖₂ − 1)²
        Adam(lr = 1e-4, β = (0.5, 0.9)) step on D
    G: minimize −mean D(G(z)),  Adam(lr = 1e-4, β = (0.5, 0.9))

The core's ``wasserstein`` loss gives the first two terms and the core's schedule the critic
iterations; this plugin suggests those settings (the user's explicit settings win) and adds the
penalty as the D loss term ``gradient_penalty``, computed by ``gancore.kernels.gradient_penalty``
on the batches D sees (``batch.real`` and ``batch.fake`` after other plugins' changes), with ε
drawn from the training RNG. λ = 10 is the paper's value; its toy-data code (gan_toy.py) used 0.1.

A D that returns one logit per group of m consecutive samples (PacGAN's packs) is penalized
per group: x̂ interpolates whole packs with one ε each and the norm is over the pack's input.

The penalty is per sample: it assumes D(x̂)_i depends on x̂_i alone. A critic that couples the
samples of a batch (minibatch discrimination) breaks that assumption, which the paper names as
a reason to leave batch-coupling layers out; enabling both works but warns.

Needs of the networks: D's logits are differentiable with respect to its input, twice
(checked before training).
"""
from __future__ import annotations

import warnings

import torch

from gancore import GancoreError, hookimpl
from gancore.kernels import gradient_penalty
from gancore.models import probing


class WganGp:
    """WGAN-GP: Wasserstein loss, 5 critic steps and a gradient penalty on D (Gulrajani et al. 2017)."""

    data_parallel = ("exact", "the gradient penalty is a per-sample mean, so the mean of the ranks' penalties is the global one")

    incompatible_with = ("wgan",)

    def __init__(self) -> None:
        self.weight = 10.0

    @hookimpl
    def gancore_add_options(self, options):
        options.add("weight", float, 10.0, "λ, the gradient penalty's weight (the paper: 10; its toy-data code used 0.1)", min=0)

    @hookimpl
    def gancore_configure(self, name, config, options):
        self.weight = options.weight
        config.suggest(name, loss="wasserstein", n_critic=5, lr_d=1e-4, lr_g=1e-4, betas_d=(0.5, 0.9), betas_g=(0.5, 0.9))
        if "minibatch-discrimination" in config.plugins:
            warnings.warn("wgan-gp with minibatch-discrimination: the WGAN-GP paper questions a per-sample gradient penalty on a critic that couples the samples of a batch")

    @hookimpl
    def gancore_check_models(self, trainer, batch):
        with probing(trainer.models.D), torch.enable_grad():
            x = batch.real.detach().requires_grad_()
            (grad,) = torch.autograd.grad(trainer.models.D(x).logits.sum(), x, allow_unused=True)
        if grad is None:
            raise GancoreError("wgan-gp penalizes the gradient of D's logits with respect to its input, but D's logits do not depend differentiably on its input")

    @hookimpl
    def gancore_discriminator_loss(self, trainer, batch, real, terms):
        D, real_x, fake_x = trainer.models.D, batch.real, batch.fake
        shape = real_x.shape
        groups = real.logits.shape[0]
        if groups != shape[0]:  # D judges groups of consecutive samples (PacGAN's packs): one x̂ per group
            if shape[0] % groups:
                raise GancoreError(f"wgan-gp: D gave {groups} logits for {shape[0]} samples; the penalty needs one logit per sample or per group of consecutive samples")
            real_x, fake_x = real_x.reshape(groups, -1), fake_x.reshape(groups, -1)

        def critic(x):
            return D(x.reshape(shape)).logits

        with trainer.world.drawing_share(trainer.generator, len(real_x)):  # one eps per sample, as in one process
            terms["gradient_penalty"] = gradient_penalty(critic, real_x, fake_x, self.weight, generator=trainer.generator)
