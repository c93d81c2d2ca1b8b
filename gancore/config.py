"""The run configuration: the core's declared options (owner ``train``) and each plugin's."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gancore.errors import GancoreError
from gancore.files import read_regular_file
from gancore.losses import LOSSES
from gancore.models import ACTIVATIONS, check_init
from gancore.options import OptionSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CORE = "train"
MAX_SEED = 2**32 - 1  # numpy's and every common seed range; evaluation seeds (seed × 1000003 + step) stay in torch's
MAX_CONFIG_BYTES = 1 << 20


def _power_of_two(value: int) -> str | None:
    return None if value & (value - 1) == 0 else "expected a power of two (8, 16, 32, ...)"


def _adam_betas(value: tuple) -> str | None:
    if len(value) != 2 or not all(0 <= beta < 1 for beta in value):
        return "expected two numbers in [0, 1), e.g. 0.5,0.999"
    return None


def core_options() -> OptionSet:
    """The core's options. Defaults follow Metz et al.'s ring8 setup (poolio/unrolled_gan)."""
    options = OptionSet(CORE)
    add = options.add
    add("dataset", str, "ring8", "built-in dataset: bimodal1d, ring8, grid25, hd1200, digits or stacked-digits")
    add("data", str, "", "a .npy/.npz/.csv file of points, or a folder of PNG/JPEG images, instead of a built-in dataset")
    add("image_size", int, 16, "side of the digit datasets' images (a power of two ≥ 8)", min=8, check=_power_of_two)
    add("model", str, "auto", "network family: mlp, dcgan, or auto (dcgan for images, mlp for vectors)", choices=("auto", "mlp", "dcgan"))
    add("g_norm", str, "batch", "normalization in the DCGAN generator", choices=("batch", "none"))
    add("d_norm", str, "none", "normalization in the DCGAN discriminator", choices=("none", "batch", "spectral"))
    add("n_train", int, 20000, "number of training points drawn from a built-in dataset", min=1)
    add("steps", int, 2000, "training steps (one step = n_critic D updates + one G update)", min=0)
    add("batch_size", int, 512, "samples per batch", min=1)
    add("seed", int, 0, "seed of data, initialization, noise and every plugin's randomness", min=0, max=MAX_SEED)
    add("device", str, "auto", "where to train: auto picks cuda when available", choices=("auto", "cpu", "cuda"))
    add("cpu_threads", int, 1, "PyTorch threads on CPU (0: PyTorch's default); small nets run fastest on one", min=0)
    add("loss", str, "non-saturating", "adversarial loss family", choices=tuple(LOSSES))
    add("n_critic", int, 1, "D updates per step", min=1)
    add(
        "update_order", str, "alternating",
        "alternating: n_critic D updates, each on its own batch, then G's on fresh noise; simultaneous: one batch, both "
        "players' gradients at the same parameters, then both steps (needs n_critic = 1; VEEGAN's, PacGAN's and the "
        "unrolled demo's official code)",
        choices=("alternating", "simultaneous"),
    )
    add("lr_g", float, 1e-3, "G's Adam learning rate", min=0)
    add("lr_d", float, 1e-4, "D's Adam learning rate", min=0)
    add("lr_decay", str, "none", "learning-rate schedule: none, or linear decay to 0 at the last step (sharpens modes)", choices=("none", "linear"))
    add("betas_g", "floats", (0.5, 0.999), "G's Adam betas", check=_adam_betas)
    add("betas_d", "floats", (0.5, 0.999), "D's Adam betas", check=_adam_betas)
    add("z_dim", int, 256, "latent dimension", min=1)
    add("g_width", int, 128, "G's hidden width", min=1)
    add("g_depth", int, 2, "G's hidden layers", min=1)
    add("d_width", int, 128, "D's hidden width", min=1)
    add("d_depth", int, 2, "D's hidden layers", min=1)
    add("g_mlp_norm", str, "none", "normalization of the MLP generator's hidden layers (PacGAN's 2-D generator: batch)", choices=("none", "batch"))
    add("d_maxout", int, 1, "pieces of each unit of the MLP D (> 1: maxout units, as PacGAN's D with 5; 1: plain units with activation)", min=1)
    add("activation", str, "relu", "hidden activation of both nets", choices=tuple(ACTIVATIONS))
    add(
        "init", str, "torch",
        "initial weights of the nets gancore and its plugins build (not of nets you give): torch (PyTorch's defaults); "
        "or zero biases with xavier-uniform (Glorot: TF-slim's default, VEEGAN's code), he-uniform (He in hidden "
        "layers, Glorot in the output layer: WGAN-GP's code), orthogonal:GAIN (the unrolled GAN demo's orthogonal:1.4), "
        "normal:STD (PacGAN's and DCGAN's normal:0.02); normalization layers start at scale 1, shift 0",
        check=check_init,
    )
    add("eval_every", int, 250, "steps between evaluations (0: only at the end)", min=0)
    add("eval_samples", int, 0, "samples scored per evaluation (0: the dataset's protocol: 2500 for mixtures, 26000 for stacked digits)", min=0)
    add("checkpoint_every", int, 1000, "steps between checkpoints (0: only at the end)", min=0)
    add("keep_checkpoints", int, 3, "how many recent checkpoints to keep", min=1)
    add("on_nonfinite", str, "stop", "on a NaN/Inf loss: stop, or roll back to the last checkpoint with halved learning rates", choices=("stop", "rollback"))
    add("max_rollbacks", int, 3, "rollbacks allowed before giving up", min=0)
    return options


@dataclass
class RunConfig:
    """Resolved settings: ``train`` (core) and ``plugins`` (name -> namespace), in enable order.

    ``explicit`` names the core settings the user set; plugins may change the others through
    :meth:`suggest`.
    """

    train: SimpleNamespace
    plugins: dict[str, SimpleNamespace]
    explicit: set[str] = field(default_factory=set)
    suggested_by: dict[str, str] = field(default_factory=dict)
    recipe: str | None = None  # the recipe the settings started from (gancore.recipes), recorded in config.toml

    def suggest(self, plugin: str, **values: Any) -> None:
        """Set core defaults on behalf of ``plugin``; explicit user settings win."""
        for name, value in values.items():
            if name in self.explicit:
                continue
            other = self.suggested_by.get(name)
            if other is not None and other != plugin and getattr(self.train, name) != value:
                raise GancoreError(
                    f"plugins {other} and {plugin} want different train.{name} "
                    f"({getattr(self.train, name)!r} vs {value!r}); set train.{name} yourself"
                )
            setattr(self.train, name, core_options().options[name].convert(value, CORE))
            self.suggested_by[name] = plugin

    def to_toml_dict(self) -> dict:
        """The resolved configuration as a TOML-ready dict (``None`` values are omitted)."""
        def clean(namespace: SimpleNamespace) -> dict:
            return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(namespace).items() if v is not None}

        recorded = {"recipe": {"name": self.recipe}} if self.recipe else {}
        return {**recorded, CORE: clean(self.train), "plugins": {name: clean(ns) for name, ns in self.plugins.items()}}


def read_toml(path: str | Path) -> dict:
    """Read a TOML config: a ``[train]`` table, ``[plugins.NAME]`` tables, and optionally
    ``[recipe]`` with ``name``, the recipe the settings start from (as a run's config.toml records it)."""
    path = Path(path)
    try:
        data = tomllib.loads(read_regular_file(path, "config file", MAX_CONFIG_BYTES).decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GancoreError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"recipe", CORE, "plugins"})
    if unknown:
        raise GancoreError(f"config file {path}: unknown table [{unknown[0]}] (use [train], [plugins.NAME] and [recipe])")
    recipe = data.get("recipe", {"name": ""})
    if not isinstance(recipe, dict) or set(recipe) != {"name"} or not isinstance(recipe["name"], str):
        raise GancoreError(f"config file {path}: [recipe] holds one key, name = \"RECIPE\" (see `gancore recipes`)")
    if not isinstance(data.get(CORE, {}), dict) or not isinstance(data.get("plugins", {}), dict):
        raise GancoreError(f"config file {path}: [train] and [plugins] must be tables")
    for name, options in data.get("plugins", {}).items():
        if not isinstance(options, dict):
            raise GancoreError(f"config file {path}: plugins.{name} must be a table [plugins.{name}] of its options")
    return data
