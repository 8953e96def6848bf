"""The package is what its py.typed promises: mypy (strict) finds nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.layout import ROOT, installed_layout


def test_the_package_type_checks_strictly(tmp_path: Path) -> None:
    installed_layout(tmp_path)  # mypy knows no package-dir mapping
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "cache"), "-p", "tufmesh"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues found in" in proc.stdout
