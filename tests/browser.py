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


@contextlib.contextmanager
def voila(notebook="notebooks/lab.ipynb", extra=()):
    """A Voila server for ``notebook`` on 127.0.0.1; yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "voila", notebook, "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read().decode()[-2000:])
                time.sleep(0.3)
        else:
            raise RuntimeError("voila did not answer within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


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
