"""PacGAN: D judges packs of m samples, all real or all fake, instead of single samples.

Lin, Khetan, Fanti & Oh (2018), "PacGAN: The power of two samples in generative adversarial
networks" (fjxmlzn/PacGAN). A pack of m independent samples from a collapsed G is visibly less
diverse than a pack of m real samples, so packing penalizes mode collapse; the loss and the
rest of training are unchanged:

    real packs  (x_1, …, x_m)          with x_i ~ P_data   ->  D([x_1; …; x_m])
    fake packs  (G(z_1), …, G(z_m))    with z_i ~ P_z      ->  D([G(z_1); …; G(z_m)])
    a batch of N samples  (N, *shape) -> (N/m, m·dim): samples k·m … k·m+m−1 form pack k

so D's input layer has m× the input features, D returns N/m logits per batch, and the core's
losses (means over logits) are the PacGAN objective. The batch size must be a multiple of m.

D is adapted in place: its input layer (its first ``nn.Linear`` or convolution: the MLP D's
first layer, also after other plugins changed its head or its input, e.g. VEEGAN's (z, x)
pairs) is replaced by a fresh layer reading m× the inputs, and D is wrapped in :class:`Packed`,
which does the reshape. For a Linear the m samples are concatenated as vectors; for a
convolution (the DCGAN D on images) they are stacked along channels, (N, C, H, W) ->
(N/m, m·C, H, W), as PacGAN's PacDCGAN does. A spectral norm on the layer is kept.

Needs of the networks: D's first registered ``nn.Linear`` or plain convolution is its input
layer (checked before training by running the packed D once).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from gancore import GancoreError, hookimpl
from gancore.errors import one_line
from gancore.models import probing


class Packed(nn.Module):
    """Calls ``inner`` on packs of ``m`` consecutive samples.

    ``channels=False``: (N, *shape) -> (N/m, m·prod(shape)), samples concatenated as vectors.
    ``channels=True``:  (N, C, *side) -> (N/m, m·C, *side), samples stacked along channels.
    """

    def __init__(self, inner: nn.Module, m: int, channels: bool = False):
        super().__init__()
        self.inner, self.m, self.channels = inner, m, channels

    def forward(self, x: torch.Tensor):
        if len(x) % self.m:
            raise GancoreError(f"pacgan packs {self.m} samples, but D was given a batch of {len(x)}, not a multiple of {self.m}")
        packs = len(x) // self.m
        return self.inner(x.reshape(packs, self.m * x.shape[1], *x.shape[2:]) if self.channels else x.reshape(packs, -1))

    def extra_repr(self) -> str:
        return f"m={self.m}, channels={self.channels}"


def _input_layer(module: nn.Module) -> tuple[str, nn.Module, str, nn.Module]:
    """(name, parent, attribute, layer) of ``module``'s input layer: its first Linear or convolution."""
    for name, layer in module.named_modules():
        if name and isinstance(layer, (nn.Linear, _ConvNd)):
            parent_name, _, attribute = name.rpartition(".")
            return name, module.get_submodule(parent_name), attribute, layer
    raise GancoreError(f"pacgan needs D's input layer to be a Linear or a convolution it can widen to m× inputs; {type(module).__name__} has neither")


def _widened(layer: nn.Module, m: int) -> nn.Module:
    """A fresh copy of ``layer`` reading m× its input features (Linear) or channels (convolution)."""
    if isinstance(layer, nn.Linear):
        new = nn.Linear(m * layer.in_features, layer.out_features, bias=layer.bias is not None)
    else:
        if layer.groups != 1 or layer.transposed:
            raise GancoreError("pacgan can widen a plain convolution only (groups=1, not transposed)")
        conv = type(layer).__bases__[0] if parametrize.is_parametrized(layer) else type(layer)  # Conv1d/2d/3d
        new = conv(
            m * layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, bias=layer.bias is not None, padding_mode=layer.padding_mode,
        )
    if not parametrize.is_parametrized(layer):
        return new
    kinds = [type(p).__name__ for name in layer.parametrizations for p in layer.parametrizations[name]]
    if list(layer.parametrizations) != ["weight"] or kinds != ["_SpectralNorm"]:
        raise GancoreError(f"pacgan cannot widen D's input layer: it carries parametrizations {kinds}, not just spectral norm")
    return spectral_norm(new)


class PacGAN:
    """PacGAN: D judges packs of m samples concatenated, all real or all fake (Lin et al. 2018)."""

    data_parallel = ("local", "packs are formed within each rank's minibatch; m must divide each rank's batch")

    def __init__(self) -> None:
        self.m = 2
        self.widened = ""  # "Linear body.0": the layer gancore_build_models widened, for messages

    @hookimpl
    def gancore_add_options(self, options):
        options.add("m", int, 2, "pack size: samples D judges together (the paper used 2 to 4; 1 is a plain GAN)", min=1)

    @hookimpl
    def gancore_configure(self, config, options):
        self.m = options.m
        if config.train.batch_size % self.m:
            raise GancoreError(f"pacgan.m={self.m} must divide train.batch_size={config.train.batch_size}; choose a batch size that is a multiple of m")

    @hookimpl
    def gancore_build_models(self, models):
        name, parent, attribute, layer = _input_layer(models.D)
        setattr(parent, attribute, _widened(layer, self.m))
        self.widened = f"{type(layer).__name__} {name}"
        models.D = Packed(models.D, self.m, channels=isinstance(layer, _ConvNd))

    @hookimpl
    def gancore_check_models(self, trainer, batch):
        if trainer.batch_size % self.m:  # on several processes, each packs its own share of the batch
            raise GancoreError(f"pacgan.m={self.m} must divide each of the {trainer.world.size} processes' batch of {trainer.batch_size}; choose train.batch_size a multiple of {self.m * trainer.world.size}")
        try:
            with probing(trainer.models.D):
                trainer.models.D(batch.real)
        except GancoreError:
            raise
        except Exception as error:
            raise GancoreError(
                f"pacgan widened D's first Linear or convolution ({self.widened}) to read packs of {self.m}, and D then fails "
                f"({one_line(error, 100)}): D's input layer must be its first registered Linear or convolution"
            ) from None
