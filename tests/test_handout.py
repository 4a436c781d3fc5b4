"""The static handout: a notebook run and rendered with its widgets frozen
into plain HTML (readable without a kernel or a CDN), checked in Chromium."""
import subprocess
import sys

import browser as B
import pytest
from conftest import ROOT


def test_handout_freezes_the_lab(tmp_path):
    r = subprocess.run([sys.executable, "tools/handout.py", "notebooks/04-lab.ipynb",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    page = (tmp_path / "04-lab.html").read_text()
    assert "frozen-widget" in page and 'class="mmu-pane"' in page
    assert "application/vnd.jupyter.widget-view+json" not in page
    assert "04-lab.html" in (tmp_path / "index.html").read_text()
    if B.available() is None:
        shots = ROOT / "artifacts" / "handout"
        shots.mkdir(parents=True, exist_ok=True)
        subprocess.run([B.CHROMIUM, "--headless", *B.FLAGS, "--hide-scrollbars",
                        "--window-size=1280,2400", f"--screenshot={shots / '04-lab.png'}",
                        f"file://{tmp_path / '04-lab.html'}"], capture_output=True, timeout=120)
        assert (shots / "04-lab.png").stat().st_size > 50_000     # a rendered page, not blank
    else:
        pytest.skip(B.available())
