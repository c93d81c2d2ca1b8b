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


def fake_recipe_distribution(folder: Path, dist: str, version: str, package: str, recipes: dict[str, str]) -> Path:
    """Write package ``package`` holding ``recipes`` (``{file name: TOML text}``) and distribution
    ``dist`` naming it in the ``gancore.recipes`` group; return ``folder``."""
    (folder / package).mkdir()
    (folder / package / "__init__.py").write_text("")
    for file, text in recipes.items():
        (folder / package / file).write_text(textwrap.dedent(text))
    info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[gancore.recipes]\n{dist} = {package}\n")
    return folder
