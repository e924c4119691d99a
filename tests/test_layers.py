"""The package's layers: no import cycle and no import up a layer (tools/import_graph.py),
counting the imports made inside functions too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_no_import_cycle_and_no_arrow_up_a_layer():
    out = subprocess.run([sys.executable, str(REPO / "tools" / "import_graph.py"), "--lazy"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 cycles, 0 arrows up a layer" in out.stdout


def test_the_check_finds_a_cycle(tmp_path):
    """The checker is not blind: a module of featstore importing one that imports it back
    is reported (on a copy of the package with that one change)."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(REPO / "featstore", copy / "featstore",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "tools", copy / "tools")
    layout = copy / "featstore" / "store" / "layout.py"
    layout.write_text(layout.read_text() + "\nfrom featstore.store import dataset  # noqa\n")
    task = copy / "featstore" / "task.py"
    task.write_text(task.read_text() + "\nfrom featstore.probe import linear  # noqa\n")
    out = subprocess.run([sys.executable, str(copy / "tools" / "import_graph.py"), "--lazy"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "cycle: featstore.store.dataset" in out.stdout
    assert "up a layer: featstore.task (data) -> featstore.probe.linear (probe)" in out.stdout
