"""The static handout: notebooks run and rendered with their widgets frozen
into plain HTML (readable without a kernel), opened in Chromium with every
request that would leave 127.0.0.1 failing the test."""
import contextlib
import functools
import http.server
import subprocess
import sys
import threading
from urllib.parse import urlparse

import browser as B
import pytest
from conftest import ROOT

NOTEBOOKS = ("notebooks/00-index.ipynb", "notebooks/04-lab.ipynb")


@pytest.fixture(scope="module")
def handout(tmp_path_factory):
    out = tmp_path_factory.mktemp("handout")
    r = subprocess.run([sys.executable, "tools/handout.py", *NOTEBOOKS, "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@contextlib.contextmanager
def served(folder):
    """The folder over HTTP on 127.0.0.1 (a page is read as a browser gets it)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_handout_freezes_the_lab(handout):
    page = (handout / "04-lab.html").read_text()
    assert "frozen-widget" in page and 'class="mmu-pane"' in page
    assert "application/vnd.jupyter.widget-view+json" not in page
    assert "04-lab.html" in (handout / "index.html").read_text()


def test_pages_name_no_script_or_font_elsewhere(handout):
    """No <script src>, stylesheet link or font that names another host."""
    import re
    for page in handout.glob("*.html"):
        text = page.read_text()
        assert not re.search(r'<script[^>]+src=', text), page.name
        assert not re.search(r'<link[^>]+href="https?:', text), page.name
        assert not re.search(r'url\(\s*["\']?(https?:)?//', text), page.name


@pytest.mark.skipif(B.available() is not None, reason=B.available() or "")
def test_handout_opens_with_the_network_blocked(handout):
    """Every page and everything it loads come from 127.0.0.1: a request to any
    other host is aborted and fails the test; the frozen lab is on screen."""
    shots = ROOT / "artifacts" / "handout"
    shots.mkdir(parents=True, exist_ok=True)
    outside, inside = [], []

    def route(r):
        host = urlparse(r.request.url).hostname
        if r.request.url.startswith(("data:", "about:")) or host == "127.0.0.1":
            inside.append(r.request.url)
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    with served(handout) as url, B.browser() as b:
        ctx = b.new_context(viewport={"width": 1280, "height": 720})
        ctx.route("**/*", route)
        p = ctx.new_page()
        for name in ["index.html"] + [f"{n.split('/')[-1][:-6]}.html" for n in NOTEBOOKS]:
            p.goto(url + name, wait_until="networkidle", timeout=60_000)
        p.locator(".mmu-pane").first.wait_for(timeout=10_000)
        p.screenshot(path=str(shots / "04-lab.png"), full_page=False)
        ctx.close()
    assert outside == []
    assert len(inside) >= 3
