"""Installed-looking plugin distributions for tests: a module and a ``.dist-info`` with entry
points, written into a folder that the test puts on ``sys.path`` (or ``PYTHONPATH``)."""
from __future__ import annotations

import textwrap
from pathlib import Path


def fake_distribution(folder: Path, dist: str, version: str, plugins: dict[str, str], module: str, source: str) -> Path:
    """Write module ``module`` (``source``) and distribution ``dist`` declaring ``plugins``
    (``{entry point name: class name in module}``) in the ``gancore`` group; return ``folder``."""
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {module}:{cls}\n" for name, cls in plugins.items())
    (info / "entry_points.txt").write_text(f"[gancore]\n{lines}")
    return folder
