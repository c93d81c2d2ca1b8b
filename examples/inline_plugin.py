"""A plugin defined in your own script: one-sided label smoothing (Salimans et al. 2016).

No package and no entry point: the class is handed to gancore.fit. It declares an option, checks
the settings it needs, and changes D's loss through a hook, like any built-in plugin.

    python examples/inline_plugin.py          # GANCORE_EXAMPLE_STEPS=20 for a quick look
"""
import os

import torch
from torch.nn.functional import binary_cross_entropy_with_logits as bce

import gancore
from gancore import GancoreError, hookimpl

STEPS = int(os.environ.get("GANCORE_EXAMPLE_STEPS", "1000"))


class OneSidedLabelSmoothing:
    """D's target for real samples is 0.9 instead of 1, for fakes still 0."""

    def __init__(self):
        self.target = 0.9

    @hookimpl
    def gancore_add_options(self, options):
        options.add("target", float, 0.9, "D's target for real samples", min=0, max=1)

    @hookimpl
    def gancore_configure(self, name, config, options):
        if config.train.loss not in ("non-saturating", "minimax"):
            raise GancoreError(f"{name} smooths a logistic D's targets; train.loss={config.train.loss} is not logistic")
        self.target = options.target

    @hookimpl
    def gancore_discriminator_loss(self, real, fake, terms):
        real_target = torch.full_like(real.logits, self.target)
        terms["adversarial"] = bce(real.logits, real_target) + bce(fake.logits, torch.zeros_like(fake.logits))


if __name__ == "__main__":
    # the built-in nets on the built-in ring8 data; the plugin by class, with an option
    result = gancore.fit(
        plugins=[(OneSidedLabelSmoothing, {"target": 0.8})],
        dataset="ring8", steps=STEPS, eval_every=max(STEPS // 4, 1), device="cpu", progress=False,
    )
    print(f"plugins {result.summary['plugins']}: modes captured {result.summary['modes_captured']}/8, "
          f"D's loss {result.summary['loss_D/adversarial']:.3f}")
