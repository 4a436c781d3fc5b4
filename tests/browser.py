"""Serving the app with Voila and driving it with Playwright and Debian's
Chromium (shared by the browser tests and benchmarks/bench_browser.py)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def available() -> str | None:
    """None if a browser test can run here, else why not."""
    if not Path(CHROMIUM).exists():
        return "Debian's chromium is not installed (./run test installs it as root)"
    for mod in ("voila", "playwright"):
        try:
            __import__(mod)
        except ImportError:
            return f"{mod} is not installed (requirements-dev.txt)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Voila's log (and its kernels', which inherit its stderr) goes to a file here.
LOGS = ROOT / "artifacts" / "voila"
# Every server here runs with the setting ./run app and ./run room use.  After a
# cell's execute reply, Voila (nbclient) waits only iopub_timeout seconds (4 by
# default) for the rest of the cell's messages, then renders the cell without
# them.  The lab's cell sends about 170 (a widget opened or updated each); with a
# pool of kernels running it at once on 2 cores the last one reached Voila up to
# 3.2 s after the reply on an idle machine and 7 s on a busy one, and a cell
# that lost them was an empty page that never showed the lab (RESULTS.md).
SERVER = ["--VoilaExecutor.iopub_timeout=60"]
# The readiness probe: a file Voila serves without starting a kernel (probing
# the notebook's URL would start one and run the notebook for nobody).
PROBE = "voila/templates/lab/static/voila.js"


# ./run app's landing page: a Voila template of the project's own.
APP_TEMPLATES = ROOT / "app"
APP = ["--template=kvm-lab"]


def app_env() -> dict:
    """The environment ./run app serves in: JUPYTER_PATH finds the landing template."""
    old = os.environ.get("JUPYTER_PATH")
    return {"JUPYTER_PATH": str(APP_TEMPLATES) + (os.pathsep + old if old else "")}


@contextlib.contextmanager
def voila(notebook="notebooks/lab.ipynb", extra=(), log="voila", env=None):
    """A Voila server for ``notebook`` on 127.0.0.1; yields its URL.

    Its output goes to ``LOGS/<log>.log``, never to a pipe: a pipe that nobody
    reads fills at 64 KiB (four cell tracebacks do it), and then the server
    blocks in write() and no page is answered any more."""
    port = free_port()
    LOGS.mkdir(parents=True, exist_ok=True)
    path = LOGS / f"{log}.log"
    cmd = [sys.executable, "-m", "voila", notebook, "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1", *SERVER, *extra]
    with open(path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url + PROBE, timeout=2).close()
                break
            except urllib.error.HTTPError:       # answered: the server is up
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"voila exited ({path}):\n" + log_tail(path))
                time.sleep(0.3)
        else:
            raise RuntimeError(f"voila did not answer within 60 s ({path})")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_tail(path, chars=2000) -> str:
    return Path(path).read_text(errors="replace")[-chars:]


def log_problems(path) -> list[str]:
    """The lines of a Voila log that mean a page may be wrong: errors (a cell that
    raised, a kernel that died), tracebacks, and cells rendered without their
    output (nbclient's IOPub timeout)."""
    return [line for line in Path(path).read_text(errors="replace").splitlines()
            if "| ERROR |" in line or line.startswith("Traceback")
            or "Timeout waiting for IOPub output" in line]


@contextlib.contextmanager
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def open_lab(b, url, width=1280, height=720):
    page = b.new_page(viewport={"width": width, "height": height})
    page.goto(url, timeout=90_000)
    page.wait_for_selector(".mmu-pane[data-mode=shadow]", timeout=90_000)
    return page


def toggle(page, name):
    page.locator("button.widget-toggle-button").filter(
        has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).click()


def button(page, label):
    page.locator("button.widget-button").filter(
        has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")).click()


def select(page, label, option_label):
    page.locator(".widget-dropdown").filter(has_text=label).locator("select").select_option(
        label=option_label)


def status(page, mode="shadow") -> str:
    return page.locator(f".mmu-pane[data-mode={mode}] .mmu-status").inner_text()


def wait_step(page, index, mode="shadow", timeout=15_000):
    page.wait_for_function(
        "([m, i]) => { const s = document.querySelector(`.mmu-pane[data-mode=${m}] .mmu-status`);"
        " return s && s.innerText.includes(`step ${i} `); }", arg=[mode, index], timeout=timeout)


def pane(page, mode) -> str:
    return page.locator(f".mmu-pane[data-mode={mode}]").inner_text()


def summary(page, mode="shadow") -> str:
    """The lab's one line for ``mode``: what the step freed, reused and flushed."""
    return page.locator(f".mmu-summary[data-mode={mode}]").inner_text()


def wait_summary(page, index, timeout=15_000):
    """Wait until the lab's "this step" box names step ``index``."""
    page.wait_for_function(
        "(i) => { const s = document.querySelector('.mmu-step');"
        " return s && s.innerText.includes(`step ${i} `); }", arg=index, timeout=timeout)


def pick_step(page, index):
    """Pick step ``index`` in the lab's list of steps (look back at it)."""
    page.locator(".widget-select").filter(has_text="steps").locator("select").select_option(
        value=None, index=index)


# What answers a click, per pane: the step's summary line, the status, every
# root box in the slots and those dropped from them, the requests and flushes.
# (The dropped roots are there only when a step freed one.)
ANSWER = (".mmu-step", ".mmu-summary", ".mmu-pane .mmu-status",
          ".mmu-pane .mmu-slots .mmu-chip", ".mmu-pane .mmu-requests", ".mmu-pane .mmu-flushes")
OPTIONAL = (".mmu-pane .mmu-dropped .mmu-chip",)


def outside_viewport(page) -> list[str]:
    """The parts of the answer not wholly on screen, with the page unscrolled."""
    return page.evaluate("""(sels) => {
        window.scrollTo(0, 0);
        const h = window.innerHeight, w = window.innerWidth, out = [];
        for (const [sel, needed] of sels) {
            const found = document.querySelectorAll(sel);
            if (needed && !found.length) out.push(sel + ': none');
            for (const e of found) {
                const r = e.getBoundingClientRect();
                if (r.top < 0 || r.bottom > h || r.left < 0 || r.right > w)
                    out.push(`${sel} ${Math.round(r.top)}..${Math.round(r.bottom)}`);
            }
        }
        return out; }""", [[s, True] for s in ANSWER] + [[s, False] for s in OPTIONAL])
