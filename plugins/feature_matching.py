"""Feature matching: G matches the mean of D's features on real data instead of fooling D.

Salimans et al. (2016), "Improved Techniques for Training GANs", Sec. 3.1 (openai/improved-gan).
Rather than maximizing D's output, G matches the statistics D finds discriminative: with f the
features D's head reads (``Critique.features``),

    L_FM = ‖ E_x f(x) − E_z f(G(z)) ‖²₂            (norm = "l2", the paper)
           ‖ E_x f(x) − E_z f(G(z)) ‖₁             (norm = "l1"; improved-gan's code used its mean)
    L_G  = weight · L_FM + adversarial_weight · L_adv

where the expectations are batch means, x is a fresh real batch (``trainer.real_batch()``)
passed through the same critic G's step is taken against, detached (a target for G, not for D),
and L_adv is the core's usual G loss. ``adversarial_weight = 0`` is pure feature matching as in
the paper; a positive value is the hybrid objective. D is trained as usual.

The real batch is drawn raw: plugins that change what D sees (``gancore_discriminator_batch``)
are applied to G's samples but not to this batch. So feature matching cannot run with VEEGAN,
whose critic reads (z, x) pairs that only its batch hook makes.

Needs of the networks: D returns features (a ``gancore.models.Discriminator``, or a Critique
whose ``features`` is a tensor); a D returning plain logits is refused before training.
"""
from __future__ import annotations

import torch

from gancore import GancoreError, hookimpl
from gancore.models import probing


class FeatureMatching:
    """Feature matching: G matches the batch mean of D's features on real data (Salimans et al. 2016)."""

    data_parallel = ("local", "the feature means are each rank's batch means, so the loss is the mean over ranks of per-rank distances, not the distance of global means")

    incompatible_with = ("veegan",)  # its critic reads (z, x) pairs; a raw real batch is not one

    def __init__(self) -> None:
        self.norm, self.weight, self.adversarial_weight = "l2", 1.0, 0.0

    @hookimpl
    def gancore_add_options(self, options):
        options.add("norm", str, "l2", "distance between the mean features: l2 (squared, the paper) or l1 (improved-gan's code)", choices=("l2", "l1"))
        options.add("weight", float, 1.0, "weight of the feature-matching term in G's loss", min=0)
        options.add("adversarial_weight", float, 0.0, "weight of G's usual adversarial loss: 0 is pure feature matching (the paper), >0 the hybrid", min=0)

    @hookimpl
    def gancore_configure(self, options):
        self.norm, self.weight, self.adversarial_weight = options.norm, options.weight, options.adversarial_weight

    def distance(self, real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
        """‖mean real − mean fake‖ (squared L2, or L1) over the batch dimension."""
        gap = real_features.flatten(1).mean(0) - fake_features.flatten(1).mean(0)
        return gap.pow(2).sum() if self.norm == "l2" else gap.abs().sum()

    @hookimpl
    def gancore_check_models(self, trainer, batch):
        with probing(trainer.models.D):
            features = trainer.models.D(batch.real).features
        if not isinstance(features, torch.Tensor):
            raise GancoreError(
                "feature-matching needs D's features: return gancore.models.Critique(logits, features), "
                "or build D as gancore.models.Discriminator(body, head) (features = body's output)"
            )

    @hookimpl
    def gancore_generator_loss(self, trainer, fake, critic, terms):
        with torch.no_grad():
            real_features = critic(trainer.real_batch()).features
        terms["adversarial"] = self.adversarial_weight * terms["adversarial"]
        terms["feature_matching"] = self.weight * self.distance(real_features, fake.features)
