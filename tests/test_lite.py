"""The zero-install classroom as a browser gets it: tools/lite.py's JupyterLite
site (built, or a fresh build reused) served on a free 127.0.0.1 port, opened
in Chromium whose every request off the machine fails the test; each notebook
opened as a student opens it, all its cells run, and no error output allowed.

CI runs the quick set (the lab on its own and notebook 04, the lab with its
checks); ``./run lite-test`` (MMU_LITE_ALL=1) runs every notebook.
MMU_LITE_NOTEBOOKS=DIR publishes and tests the notebooks in DIR instead of
notebooks/ (to try changed notebooks before committing them).
Screenshots go to artifacts/lite/.
"""
import json
import os
import urllib.request
from pathlib import Path

import lite_browser as L
import pytest

reason = L.available()
if reason and os.environ.get("CI"):
    raise RuntimeError(f"browser tests cannot run in CI: {reason}")
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")

SHOTS = L.ROOT / "artifacts" / "lite"
SOURCE = Path(os.environ.get("MMU_LITE_NOTEBOOKS") or L.ROOT / "notebooks")
ALL = sorted(p.name for p in SOURCE.glob("*.ipynb"))
QUICK = ["lab.ipynb", "04-lab.ipynb"]
NOTEBOOKS = ALL if os.environ.get("MMU_LITE_ALL") else QUICK


@pytest.fixture(scope="module")
def url():
    with L.served(notebooks=SOURCE) as u:
        yield u


@pytest.fixture(scope="module")
def student(url):
    """One student's browser (its cache is shared by the notebooks it opens)."""
    with L.chromium() as b:
        s = L.Session(b)
        yield s
        s.close()


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def assert_stayed_home(student):
    assert student.offsite == [], f"requests left 127.0.0.1: {student.offsite[:5]}"
    assert student.requests, "the browser made no request at all"


def test_site_ships_what_its_lock_names():
    """Every wheel the browser's Python preloads is in the site, with the sha256
    the lock says; the kernel is kept off PyPI and the app is exposed for tests."""
    site = L.lite.build(reuse=True, notebooks=SOURCE)
    pyo = site / "static" / "pyodide"
    lock = json.loads((pyo / "pyodide-lock.json").read_text())["packages"]
    for name, entry in lock.items():
        assert L.lite.sha256(pyo / entry["file_name"]) == entry["sha256"], name
        assert all(d in lock for d in entry["depends"]), name
    assert {w.name for w in pyo.glob("*.whl")} == {e["file_name"] for e in lock.values()}
    cfg = json.loads((site / "jupyter-lite.json").read_text())["jupyter-config-data"]
    kernel = cfg["litePluginSettings"]["@jupyterlite/pyodide-kernel-extension:kernel"]
    assert kernel["disablePyPIFallback"] is True
    assert set(kernel["loadPyodideOptions"]["packages"]) >= {"mmu-model", "ipywidgets", "ipython"}
    assert cfg["exposeAppInBrowser"] is True


def test_server_sends_modules_and_webassembly_with_their_types(url):
    """Browsers refuse a module worker or streaming WebAssembly sent as anything else."""
    for path, mime in [("static/pyodide/pyodide.mjs", "text/javascript"),
                       ("static/pyodide/pyodide.asm.wasm", "application/wasm")]:
        with urllib.request.urlopen(url + path, timeout=10) as r:
            assert r.headers["Content-Type"] == mime, path
            assert len(r.read()) > 1000


def test_landing_page_shows_progress_then_lists_the_notebooks(student, url):
    page = student.page()
    page.goto(url)
    bar = page.locator("#prep-bar")
    assert int(bar.get_attribute("max")) > 10_000_000        # Python is megabytes: say so
    page.wait_for_function("() => { const b = document.getElementById('prep-bar');"
                           " return b.value === b.max; }", timeout=120_000)
    assert "ready" in page.locator("#prep-text").inner_text()
    links = page.locator("ol a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert links == [f"notebooks/index.html?path=notebooks/{n}" for n in ALL if n[0].isdigit()]
    shot(page, "landing")
    page.close()
    assert_stayed_home(student)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_the_browser_without_errors(student, url, name):
    page, _ = L.open_notebook(student, url, f"notebooks/{name}")
    try:
        cells = L.run_all(page)
        assert L.errors(cells) == []
        assert cells and all(c["count"] for c in cells), "a code cell did not run"
        shot(page, f"run-{name.removesuffix('.ipynb')}")
    finally:
        page.close()
    assert student.page_errors == []
    assert_stayed_home(student)


def test_lab_answers_clicks_in_the_browser(student, url):
    """The lab in the student's browser: a WP toggle frees the shadow root and
    keeps the TDP root; a CR3 write back to PCID 0 finds its root in the cache."""
    import browser as B
    page = student.page()
    page.goto(f"{url}notebooks/index.html?path=notebooks/lab.ipynb")
    try:
        banner = page.locator("#mmu-kernel-banner")           # while Python starts, it says so
        page.wait_for_function("() => /Starting Python/.test(document.getElementById"
                               "('mmu-kernel-banner').textContent)", timeout=120_000)
        shot(page, "lab-starting")
        page.evaluate(f"({L.KERNEL_READY_JS})('notebooks/lab.ipynb')")
        banner.wait_for(state="detached", timeout=5_000)
        assert L.errors(L.run_all(page)) == []
        page.wait_for_selector(".mmu-pane[data-mode=shadow]", timeout=60_000)
        B.toggle(page, "WP")
        B.wait_step(page, 0)
        shadow, tdp = B.pane(page, "shadow"), B.pane(page, "tdp")
        assert "FREED" in shadow and "NEW" in shadow
        assert "KEPT" in tdp and "FREED" not in tdp
        B.select(page, "CR3", "0x2001 · PCID 1")
        B.button(page, "MOV CR3")
        B.wait_step(page, 1)
        B.select(page, "CR3", "0x1000 · PCID 0")
        B.button(page, "MOV CR3")
        B.wait_step(page, 2)
        assert "root from cache" in B.status(page, "shadow")
        shot(page, "lab-clicked")
    finally:
        page.close()
    assert_stayed_home(student)

