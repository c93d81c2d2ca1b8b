"""gancore: train GANs that do not mode-collapse.

``gancore.fit`` trains your own networks on your own data (see ``gancore.api``). Plugin authors
need two names from here: ``hookimpl`` to mark hook implementations and ``GancoreError`` for
one-line user errors. The hooks are documented in ``gancore.hookspecs``.
"""
import pluggy

from gancore.errors import GancoreError

__version__ = "0.1.0"
hookimpl = pluggy.HookimplMarker("gancore")

__all__ = ["GancoreError", "Result", "fit", "hookimpl", "__version__"]


def __getattr__(name: str):
    # the API imports torch and the trainer: only when it is used, so that plugins import gancore cheaply
    if name in ("fit", "Result"):
        from gancore import api

        return getattr(api, name)
    raise AttributeError(f"module 'gancore' has no attribute {name!r}")
