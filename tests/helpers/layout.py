"""The tufmesh namespace laid out as installed, for tools that know no package-dir mapping."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def installed_layout(into: Path, *, copy: bool = False) -> Path:
    """Lay the ``tufmesh`` package out in ``into`` (a link per module, or a copy
    for a tool that writes next to the sources) and return ``into``."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package, folder in config["tool"]["setuptools"]["package-dir"].items():
        target = into.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).glob("*.py"):
            if copy:
                shutil.copy(source, target / source.name)
            else:
                (target / source.name).symlink_to(source)
    return into
