"""The documentation's code runs as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_quickstart_runs_as_written(tmp_path):
    """docs/getting-started.md's quickstart, in a fresh directory holding the shipped data."""
    (blocks,) = python_blocks(ROOT / "docs" / "getting-started.md")
    os.symlink(ROOT / "data", tmp_path / "data")
    script = tmp_path / "quickstart.py"
    script.write_text(blocks)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "labels" in proc.stdout and (tmp_path / "cu.npz").exists()
    assert (tmp_path / "runs" / "quickstart" / "summary.json").exists()


def test_docs_pages_in_the_navigation_exist():
    nav = re.findall(r":\s*([\w/-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    assert len(nav) >= 15
    missing = [p for p in nav if not (ROOT / "docs" / p).exists()]
    assert not missing


@pytest.mark.parametrize("page", ["README.md", "docs/index.md", "docs/getting-started.md",
                                  "docs/guide/building-models.md", "docs/theory.md"])
def test_product_text_names_no_issue_numbers_or_machine_paths(page):
    text = (ROOT / page).read_text()
    assert not re.search(r"\b[Ii]ssue \d+", text) and "/work/" not in text
