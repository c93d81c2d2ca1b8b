"""gancore: train GANs that do not mode-collapse.

Plugin authors need two names from here: ``hookimpl`` to mark hook implementations and
``GancoreError`` for one-line user errors. The hooks are documented in ``gancore.hookspecs``.
"""
import pluggy

from gancore.errors import GancoreError

__version__ = "0.1.0"
hookimpl = pluggy.HookimplMarker("gancore")

__all__ = ["GancoreError", "hookimpl", "__version__"]
