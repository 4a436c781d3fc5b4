"""The JupyterLite site in a real browser (shared by tests/test_lite.py and
benchmarks/bench_lite.py): build it (or reuse a fresh build), serve it on a
free 127.0.0.1 port, and drive the JupyterLab inside it through
``window.jupyterapp`` (the site is built with ``exposeAppInBrowser``).

Every request the browser makes is recorded; one that leaves 127.0.0.1 is
refused twice over (Chromium's proxy points at a closed local port, so such a
request cannot connect) and listed in ``Session.offsite`` for the caller to fail on.
"""
from __future__ import annotations

import contextlib
import importlib.util
import time
from pathlib import Path
from urllib.parse import urlsplit

import browser as B

ROOT = B.ROOT
_spec = importlib.util.spec_from_file_location("lite_tool", ROOT / "tools" / "lite.py")
lite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lite)

LOCAL_HOSTS = {"127.0.0.1"}


def available() -> str | None:
    """None if the site can be built and driven here, else why not."""
    try:
        __import__("playwright")
    except ImportError:
        return "playwright is not installed (requirements-dev.txt)"
    if not Path(B.CHROMIUM).exists():
        return "Debian's chromium is not installed (./run test installs it as root)"
    return None


def offsite(url: str) -> bool:
    """Would fetching ``url`` leave this machine?"""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        return False                      # data:, blob:, about:, chrome-extension: ...
    return parts.hostname not in LOCAL_HOSTS


@contextlib.contextmanager
def served(out=None, notebooks=None):
    """The site (built or reused) served on a free 127.0.0.1 port; yields its URL."""
    site = lite.build(out or lite.OUT, reuse=True, notebooks=notebooks or lite.NOTEBOOKS)
    httpd, url = lite.serve_in_thread(site)
    try:
        yield url
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextlib.contextmanager
def chromium():
    """Chromium whose only way out is a proxy on a closed 127.0.0.1 port:
    loopback bypasses it, anything else fails to connect."""
    from playwright.sync_api import sync_playwright
    closed = B.free_port()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=B.CHROMIUM,
                              args=B.FLAGS + [f"--proxy-server=http://127.0.0.1:{closed}"])
        try:
            yield b
        finally:
            b.close()


class Session:
    """One student: a browser context (its own cache and storage) with every
    request recorded."""

    def __init__(self, browser, width=1280, height=800):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.requests: list[str] = []
        self.offsite: list[str] = []
        self.page_errors: list[str] = []
        self.context.on("request", self._request)

    def _request(self, request):
        self.requests.append(request.url)
        if offsite(request.url):
            self.offsite.append(request.url)

    def page(self):
        p = self.context.new_page()
        p.on("pageerror", lambda e: self.page_errors.append(str(e)))
        return p

    def close(self):
        self.context.close()


APP_JS = "() => !!(window.jupyterapp && window.jupyterapp.shell)"

# Resolves when the current notebook's kernel has answered a first request.
KERNEL_READY_JS = """async (path) => {
  const app = window.jupyterapp;
  for (;;) {
    const w = app.shell.currentWidget;
    if (w && w.context && w.context.path === path && w.sessionContext) {
      await w.context.ready; await w.sessionContext.ready;
      const k = w.sessionContext.session && w.sessionContext.session.kernel;
      if (k) { await k.info; return k.status; }
    }
    await new Promise(r => setTimeout(r, 100));
  }
}"""

RUN_ALL_JS = """async () => {
  const app = window.jupyterapp, w = app.shell.currentWidget;
  await app.commands.execute('notebook:run-all-cells');
  const cells = [], model = w.content.model;
  for (let i = 0; i < model.cells.length; i++) {
    const c = model.cells.get(i);
    if (c.type !== 'code') continue;
    const outs = c.outputs.toJSON();
    cells.push({index: i, count: c.executionCount,
                errors: outs.filter(o => o.output_type === 'error')
                            .map(o => `${o.ename}: ${o.evalue}`),
                stderr: outs.filter(o => o.output_type === 'stream' && o.name === 'stderr')
                            .map(o => [].concat(o.text).join('')),
                text: outs.map(o => o.text ? [].concat(o.text).join('') :
                                 (o.data && o.data['text/plain'] ?
                                  [].concat(o.data['text/plain']).join('') : '')).join('\\n')});
  }
  return cells;
}"""


def open_notebook(session: Session, url: str, path: str, timeout_s=240):
    """Open ``path`` (e.g. ``notebooks/04-lab.ipynb``) as the landing page's link
    does (the single-notebook app: JupyterLab would also reopen, and start a
    kernel for, every notebook this browser opened before), and wait for its
    kernel; (page, seconds from navigation to a kernel that has answered)."""
    page = session.page()
    t0 = time.perf_counter()
    page.goto(f"{url}notebooks/index.html?path={path}", timeout=timeout_s * 1000)
    page.wait_for_function(APP_JS, timeout=timeout_s * 1000)
    page.evaluate(f"({KERNEL_READY_JS})({path!r})")
    return page, time.perf_counter() - t0


def run_all(page) -> list[dict]:
    """Run every cell of the current notebook; per code cell its index, execution
    count, error outputs ("Name: value"), stderr text and plain-text output."""
    return page.evaluate(f"({RUN_ALL_JS})()")


def errors(cells: list[dict]) -> list[str]:
    return [f"cell {c['index']}: {e}" for c in cells for e in c["errors"]]
