"""The classroom server (./run room, room/serve.py) as the room's clients meet it.

One server on a free 127.0.0.1 port, with the room's settings and a small
ceiling (2 places, a preheated pool of 1) and a token:

* without the token, or with a wrong one, a browser gets the login page and no
  kernel starts (the server's ipykernel children, counted from /proc, stay as
  they were, and the pool's kernel is not handed out);
* with the token the class gets the lab until 2 kernels exist; every request
  past that gets the "room is full" page (HTTP 503, HTML) at once, and the
  memory of the server and its kernels (RSS from /proc) stays under the
  ceiling room/serve.py derives for 2 places;
* a place freed (a kernel shut down) goes to the next student.

Screenshots of the lab reached with the token and of the full page, in Chromium
when it is here: artifacts/room/.
"""
from __future__ import annotations

import concurrent.futures
import http.cookiejar
import importlib.util
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import browser as B
import pytest

# room/serve.py by its path: room/ must not go on sys.path, where its voila.py
# (Voila's configuration file) would hide the voila package.
_spec = importlib.util.spec_from_file_location("room_serve", B.ROOT / "room" / "serve.py")
serve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve)

PLACES = 2
SHOTS = B.ROOT / "artifacts" / "room"
LOG = B.LOGS / "test-room.log"


# --- what /proc says about the server (room/serve.py reads it) ----------------------

children, cmdline, kernels = serve.descendants, serve.cmdline, serve.kernels


def wait_for(what, predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout} s (log: {LOG})\n" + B.log_tail(LOG))


# --- HTTP as a browser without JavaScript --------------------------------------------

class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def get(url, follow=False, timeout=120, headers=None):
    """(status, headers, body, seconds) of GET ``url``."""
    opener = urllib.request.build_opener(*([] if follow else [NoRedirect()]))
    t0 = time.perf_counter()
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as r:
            status, hdrs, body = r.status, r.headers, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        status, hdrs, body = e.code, e.headers, e.read().decode(errors="replace")
    return status, hdrs, body, time.perf_counter() - t0


def kernel_id(page: str) -> str:
    m = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page)
    assert m, "the lab's page names no kernel"
    return m.group(1)


def is_lab(page: str) -> bool:
    """The page is the lab with its widgets rendered (the lab's cell ran)."""
    return "application/vnd.jupyter.widget-view+json" in page and '"kernelId"' in page


# --- the room ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def room():
    port = B.free_port()
    token = secrets.token_urlsafe(12)
    args = ["--Voila.ip=127.0.0.1", f"--port={port}", f"--max-students={PLACES}", "--pool_size=1"]
    seen: set[int] = set()
    with serve.running(args, LOG, env={**os.environ, "ROOM_TOKEN": token}) as (proc, printed):
        try:
            wait_for("the pool's kernel has started", lambda: len(kernels(proc.pid)) == 1, 60)
            base = f"http://127.0.0.1:{port}/"
            # The address the teacher hands out is the one the server printed.
            assert printed == f"{base}?token={token}", printed
            yield {"proc": proc, "base": base, "token": token, "url": printed}
        finally:
            seen.update(children(proc.pid))
    # The server took its kernels with it.
    wait_for("every kernel gone with the server",
             lambda: not [p for p in seen if Path(f"/proc/{p}").exists()
                          and "ipykernel" in cmdline(p)], 20)


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium, or None where it is not installed (the HTTP checks still run)."""
    if B.available() is not None:
        yield None
        return
    with B.browser() as b:
        yield b


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def steady(room, count, seconds=4.0):
    """The kernel count stays ``count`` for ``seconds`` (the pool refills 1 s after
    a kernel is taken, so a kernel handed out would show within that)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        n = len(kernels(room["proc"].pid))
        assert n == count, f"{n} kernels, expected {count}"
        time.sleep(0.25)


def test_without_the_token_no_kernel_starts(room, chromium):
    before = kernels(room["proc"].pid)
    assert len(before) == 1                  # the preheated pool, before anyone came
    base = room["base"]
    for url in (base, base + "?token=wrong-" + room["token"], base + "lab.ipynb",
                base + "?token="):
        status, hdrs, body, _ = get(url)
        assert status == 302 and "/login" in hdrs["Location"], (url, status)
        status, _, body, _ = get(url, follow=True)
        assert status == 200 and 'type="password"' in body and not is_lab(body), url
    # The kernel API and the page's shutdown call refuse a stranger, even one
    # who knows the pool kernel's id (here from the server's log).
    pool_kernel = re.search(r"Kernel started: ([0-9a-f-]{36})", LOG.read_text()).group(1)
    # With the XSRF cookie the login page hands out, so that what refuses them
    # is the missing token, not the missing cookie.
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(base + "login", timeout=30).close()
    xsrf = next(c.value for c in jar if c.name == "_xsrf")
    for method, path in (("GET", f"api/kernels/{pool_kernel}"),
                         ("DELETE", f"api/kernels/{pool_kernel}"),
                         ("POST", f"voila/api/shutdown/{pool_kernel}")):
        req = urllib.request.Request(base + path, method=method, headers={"X-XSRFToken": xsrf},
                                     data=b"" if method == "POST" else None)
        try:
            opener.open(req, timeout=30).close()
            raise AssertionError(f"{method} {path} answered without the token")
        except urllib.error.HTTPError as e:
            assert e.code == 403, (method, path, e.code)
    assert "_xsrf' argument missing" not in LOG.read_text()
    if chromium is not None:
        page = chromium.new_page(viewport={"width": 1280, "height": 720})
        page.goto(base, timeout=30_000)
        assert "/login" in page.url and page.locator("input[type=password]").count() == 1
        assert "Setup a Password" not in page.inner_text("body")   # no password change
        shot(page, "without-token")
        page.close()
    steady(room, 1)
    assert kernels(room["proc"].pid) == before
    assert "Using pre-heated kernel" not in LOG.read_text()


def test_the_class_gets_the_lab_until_the_room_is_full(room, chromium, capsys):
    pid, url = room["proc"].pid, room["url"]
    pages = []
    if chromium is not None:
        # The first student in a real browser, from the address handed out.
        page = B.open_lab(chromium, url)
        B.toggle(page, "WP")              # the kernel answers through the token's cookie
        B.wait_step(page, 0)
        assert "FREED" in B.pane(page, "shadow")
        shot(page, "lab-with-token")
        pages.append(kernel_id(page.content()))
        room["page"] = page
    for student in range(len(pages), PLACES):
        status, hdrs, body, seconds = get(url)
        assert status == 200 and is_lab(body), (student, status, body[-500:])
        # Nothing on the page comes from another host (a classroom network may
        # have no internet): the app's template drops Voila's CDN links.
        assert not re.search(r'(href|src)="(https?:)?//', body), re.findall(r'(?:href|src)="//?[^"]*', body)
        # The cookie Voila's page needs to give the place back when it is left.
        assert any(c.startswith("_xsrf=") for c in hdrs.get_all("Set-Cookie")), hdrs
        pages.append(kernel_id(body))
    room["students"] = pages
    wait_for(f"{PLACES} kernels", lambda: len(kernels(pid)) == PLACES, 30)

    def late(_):
        return get(url, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(late, range(12)))
    for status, hdrs, body, seconds in answers:
        assert status == 503, (status, body[-300:])
        assert hdrs["Content-Type"].startswith("text/html")
        assert "<h1>The room is full</h1>" in body and f"All {PLACES} places are taken." in body
        assert '<meta http-equiv="refresh" content="30">' in body      # it tries again
    if chromium is not None:
        # A student who reloads the lab in the full room gets it again: the old
        # page gives its place back, and the new one waits for it.
        old = pages[0]
        reply = room["page"].reload(timeout=90_000)
        assert reply.status == 200
        room["page"].wait_for_selector(".mmu-pane[data-mode=shadow]", timeout=90_000)
        pages[0] = kernel_id(room["page"].content())
        assert pages[0] != old
        wait_for("the old kernel shut down", lambda: f"Kernel shutdown: {old}" in LOG.read_text(), 30)
        assert len(kernels(pid)) == PLACES
        page = chromium.new_page(viewport={"width": 1280, "height": 720})
        reply = page.goto(url, timeout=30_000)
        assert reply.status == 503
        assert page.locator("h1").inner_text() == "The room is full"
        shot(page, "room-full")
        page.close()
    steady(room, PLACES, 3)
    server, per_kernel, total = serve.memory(pid)
    with capsys.disabled():
        times = sorted(a[3] for a in answers)
        print(f"\nroom: {len(answers)} requests past {PLACES} places: 503 in"
              f" {times[len(times) // 2] * 1000:.0f} ms median, {times[-1] * 1000:.0f} ms max;"
              f" server {server:.0f} MiB, kernels {', '.join(f'{k:.0f}' for k in per_kernel)}"
              f" MiB; total {total:.0f} of {serve.room_mib(PLACES)} MiB allowed")
    assert total < serve.room_mib(PLACES)
    assert max(per_kernel) < serve.KERNEL_MIB


def test_a_freed_place_goes_to_the_next_student(room):
    pid, url, base = room["proc"].pid, room["url"], room["base"]
    gone = room["students"][0]
    assert len(kernels(pid)) == PLACES
    started = LOG.read_text().count("Kernel started:")
    if "page" in room:
        # The first student leaves the lab: Voila's page asks the server to
        # shut its kernel down (a POST with the _xsrf cookie, room/voila.py).
        page = room.pop("page")
        page.goto("about:blank")
        page.close()
    else:
        req = urllib.request.Request(base + f"api/kernels/{gone}", method="DELETE",
                                     headers={"Authorization": f"token {room['token']}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 204
    wait_for("the kernel shut down", lambda: f"Kernel shutdown: {gone}" in LOG.read_text(), 30)
    # The pool refills into the freed place, and the next student takes it.
    wait_for("the pool refilled", lambda: len(kernels(pid)) == PLACES
             and LOG.read_text().count("Kernel started:") == started + 1, 60)
    status, _, body, _ = get(url)
    assert status == 200 and is_lab(body) and kernel_id(body) not in room["students"]
    assert get(url, timeout=30)[0] == 503


def test_bad_options_are_one_line_and_exit_2():
    cases = ["--max-students=0", "--max-students=abc", "--max-students=100000",
             "--token=short", "--token=has space1", "--max-students="]
    for arg in cases:
        r = subprocess.run([sys.executable, str(B.ROOT / "room" / "serve.py"), arg],
                           capture_output=True, text=True, timeout=30,
                           env={k: v for k, v in os.environ.items() if not k.startswith("ROOM_")})
        assert r.returncode == 2 and r.stdout == "", (arg, r)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, (arg, r.stderr)
        assert arg.split("=")[0] in r.stderr, (arg, r.stderr)
    for var, value in (("ROOM_TOKEN", "bad"), ("ROOM_MAX_STUDENTS", "-3")):
        r = subprocess.run([sys.executable, str(B.ROOT / "room" / "serve.py")],
                           capture_output=True, text=True, timeout=30, env={**os.environ, var: value})
        assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith(f"./run room: {var}:"), r


def test_the_readme_shows_what_the_room_prints():
    readme = (B.ROOT / "README.md").read_text()
    block = re.search(r"\./run room --max-students=25 .*?```text\n(.*?)```", readme, re.S)
    assert block, "README shows no banner after ./run room --max-students=25"
    shown = block.group(1).splitlines()
    token = re.search(r"token=(\S+)", shown[2]).group(1)
    _, _, banner = serve.plan(["--max-students=25"], {"ROOM_TOKEN": token})
    banner[2] = banner[2].replace(f"//{serve.socket.gethostname()}:", "//labhost:")
    assert shown == banner
    flat = " ".join(readme.split())
    assert f"{serve.SERVER_MIB} MiB for the server and {serve.KERNEL_MIB} MiB a place" in flat
    grace = re.search(r"full_grace = Float\(([\d.]+)", (B.ROOT / "room" / "voila.py").read_text())
    assert f"waited {float(grace.group(1)):g} s for a place" in flat
    page = (B.ROOT / "room" / "jupyter" / "voila" / "templates" / "room" / "503.html").read_text()
    assert 'http-equiv="refresh" content="30"' in page and "tries again every 30 s" in flat


def test_the_settings_the_readme_explains_are_kept():
    cmd, env, banner = serve.plan(["--port=9000"], {"ROOM_TOKEN": "t" * 16})
    assert "--port=9000" in cmd and "--port=8866" not in cmd
    for d in serve.DEFAULTS[1:]:
        assert d in cmd
    assert env["JUPYTER_TOKEN"] == "t" * 16 and "t" * 16 not in " ".join(cmd)
    assert banner[2].strip().endswith(":9000/?token=" + "t" * 16)
    # A token is made when none is given, and differs from run to run.
    a, b = (serve.plan([], {})[1]["JUPYTER_TOKEN"] for _ in range(2))
    assert a != b and len(a) >= 16
