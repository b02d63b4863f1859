"""Generated code matches the .proto files; every subpackage is in the distribution; ruff is clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_matches_protos():
    result = subprocess.run(
        [sys.executable, "tools/gen_protos.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_package_folder_is_a_package_and_its_module_path_is_its_file_path():
    # pyproject finds packages under the source root services/: a folder of modules without an
    # __init__.py would silently drop out of the distribution.
    root = REPO / "services"
    for folder in {p.parent for p in (root / "taxonstream").rglob("*.py")}:
        assert (folder / "__init__.py").exists(), f"{folder.relative_to(REPO)} has modules but no __init__.py"
    import taxonstream.core.bus

    assert Path(taxonstream.core.bus.__file__).resolve() == root / "taxonstream" / "core" / "bus.py"


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_ruff_format_is_clean():
    # The tree was formatted once (aa4442a); this keeps it so, as `ruff check` keeps the lint rules.
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
