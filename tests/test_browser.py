"""The app in a real browser: Voila serves notebooks/lab.ipynb on 127.0.0.1 and
Playwright drives Debian's Chromium.  Screenshots go to artifacts/browser/."""
import contextlib
import os

import browser as B
import pytest

reason = B.available()
if reason and os.environ.get("CI"):
    raise RuntimeError(f"browser tests cannot run in CI: {reason}")
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")
SHOTS = B.ROOT / "artifacts" / "browser"


@pytest.fixture(scope="module")
def url():
    with B.voila(log="test-lab") as u:
        yield u


@pytest.fixture(scope="module")
def chromium():
    with B.browser() as b:
        yield b


@pytest.fixture
def page(url, chromium):
    p = B.open_lab(chromium, url)
    yield p
    p.close()


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_wp_toggle_frees_shadow_root_and_keeps_tdp_root(page):
    B.toggle(page, "WP")
    B.wait_step(page, 0)
    shadow, tdp = B.pane(page, "shadow"), B.pane(page, "tdp")
    assert "FREED" in shadow and "NEW" in shadow
    assert "no VM exit" in B.status(page, "tdp") and "KEPT" in tdp and "FREED" not in tdp
    shot(page, "wp-toggle-v6.18")


def test_cr3_between_pcids_hits_the_cache(page):
    B.select(page, "CR3", "0x2001 · PCID 1")
    B.button(page, "MOV CR3")
    B.wait_step(page, 0)
    B.select(page, "CR3", "0x1000 · PCID 0")
    B.button(page, "MOV CR3")
    B.wait_step(page, 1)
    assert "root from cache" in B.status(page, "shadow")
    assert "REUSED" in B.pane(page, "shadow")
    shot(page, "cr3-cache-hit")


def test_illegal_write_shows_gp_and_changes_nothing(page):
    before = B.pane(page, "shadow").split("\n")[1]          # the register line
    B.toggle(page, "LA57")
    B.wait_step(page, 0)
    assert "#GP" in B.status(page, "shadow") and "Nothing changed" in B.status(page, "shadow")
    assert B.pane(page, "shadow").split("\n")[1] == before
    shot(page, "illegal-la57")


def test_era_switch_redraws_both_panes(page):
    B.toggle(page, "WP")
    B.wait_step(page, 0)
    B.select(page, "era", "v5.17")
    page.wait_for_function("() => document.querySelector('.mmu-pane[data-mode=tdp]')"
                           ".innerText.includes('v5.17')", timeout=15_000)
    assert "v5.17" in B.pane(page, "shadow")
    assert "DESTROYED" in B.pane(page, "tdp")        # v5.17: the WP toggle destroys the root
    shot(page, "era-switch-v5.17")


def test_nested_pane_shows_both_contexts(page):
    """The right pane as nested TDP: in v5.19 L2's CR0.WP write unloads both
    contexts - L1's TDP root destroyed, the shadow-EPT root back from the hash."""
    B.select(page, "era", "v5.19")
    B.select(page, "right pane", "nested TDP: the bits are L2's")
    page.wait_for_selector(".mmu-pane[data-mode=nested-tdp] .mmu-nested", timeout=15_000)
    B.toggle(page, "WP")
    B.wait_step(page, 0, mode="nested-tdp")
    pane = B.pane(page, "nested-tdp")
    assert "L2 runs on guest_mmu" in pane and "root_mmu: no root" in pane
    assert "DESTROYED" in pane and "was root_mmu current" in pane
    assert "from the shadow-page hash" in pane
    shot(page, "nested-wp-v5.19")


def projector_shot(page, name):
    """What a projector shows: the viewport only, 1280x720, page unscrolled."""
    B.ROOT.joinpath("artifacts").mkdir(exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(B.ROOT / "artifacts" / f"{name}.png"), full_page=False)


@pytest.mark.parametrize("height", [720, 800])
def test_whole_answer_visible_without_scrolling(url, chromium, height):
    """At 1280x720 (and 1280x800), after CR0.WP off, a PCID switch and an era switch,
    each pane's one-line summary, its status, every root box of its slots, the roots
    dropped from them, the requests and the flushes are on screen, page unscrolled."""
    page = B.open_lab(chromium, url, height=height)
    B.toggle(page, "WP")
    B.wait_step(page, 0)
    B.wait_summary(page, 0)
    assert "✕ freed #1 (was current)" in B.summary(page, "shadow")
    assert "→ no VM exit" in B.summary(page, "tdp") and "kept #1" in B.summary(page, "tdp")
    assert B.outside_viewport(page) == []
    if height == 720:
        projector_shot(page, "lab-720-wp-off")
    B.select(page, "CR3", "0x2001 · PCID 1")
    B.button(page, "MOV CR3")
    B.wait_step(page, 1)
    B.wait_summary(page, 1)
    assert "kept in prev0" in B.summary(page, "shadow")
    assert B.outside_viewport(page) == []
    if height == 720:
        projector_shot(page, "lab-720-pcid-switch")
    B.select(page, "era", "v5.17")
    page.wait_for_function("() => document.querySelector('.mmu-pane[data-mode=shadow]')"
                           ".innerText.includes('v5.17')", timeout=15_000)   # drawn last
    assert "≠" in page.locator(".mmu-step").inner_text()
    assert B.outside_viewport(page) == []
    if height == 720:
        projector_shot(page, "lab-720-era-switch")
    B.pick_step(page, 0)                  # the step where v5.17 differs from v6.18
    page.wait_for_function("() => document.querySelector('.mmu-step').innerText"
                           ".includes('looking back')", timeout=15_000)
    assert "destroyed #1" in B.summary(page, "tdp")
    assert "under v6.18" in page.locator(".mmu-step").inner_text()
    B.wait_step(page, 0)                  # the shadow pane is drawn last
    assert "DESTROYED" in B.pane(page, "tdp") and "step 0 " in B.status(page, "tdp")
    assert B.outside_viewport(page) == []
    if height == 720:
        projector_shot(page, "lab-720-era-switch-step-0")
    page.close()


def test_help_and_legend_open_by_click(page):
    """The legend and the bits' and buttons' help open with a click (no hover)."""
    assert not page.locator(".mmu-legend .mmu-chip").first.is_visible()
    page.locator(".mmu-legend summary").click()
    assert page.locator(".mmu-legend .mmu-chip").first.is_visible()
    page.locator(".mmu-help summary").click()
    assert "not an MMU role bit in v6.18" in page.locator(".mmu-help").inner_text()


def readme_blurbs() -> dict:
    """The README's table of notebooks: {name: its one line}."""
    import re
    text = (B.ROOT / "README.md").read_text()
    return {k: v.replace("`", "") for k, v in re.findall(r"^\| `(\d\d-[\w-]+)` \| (.+?) \|$", text, re.M)}


def test_landing_page_puts_the_lab_first_and_the_notebooks_in_order(chromium):
    """./run app's landing page: a title, the lab for the projector first, then every
    notebook in reading order with the README's one line for it; the lab link opens
    the lab; neither page asks anything of a host other than 127.0.0.1."""
    from urllib.parse import urlparse
    names = sorted(p.stem for p in (B.ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
    outside = []

    def local_only(route):                   # nothing is fetched from another host
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()
    with B.voila("notebooks/", extra=B.APP, log="test-landing", env=B.app_env()) as url:
        p = chromium.new_page(viewport={"width": 1280, "height": 720})
        p.route("**/*", local_only)
        p.goto(url, timeout=60_000, wait_until="networkidle")
        p.locator(".kvm-landing").wait_for(timeout=60_000)
        assert outside == []
        shot(p, "landing")
        projector_shot(p, "landing-720")
        assert p.locator("h1").inner_text() == "KVM MMU Root Lab"
        lab, first = p.locator("a.kvm-lab"), p.locator(".kvm-notebooks li").first
        assert lab.bounding_box()["y"] < first.bounding_box()["y"]
        assert lab.bounding_box()["y"] + lab.bounding_box()["height"] < 720
        items = p.locator(".kvm-notebooks li").all_inner_texts()
        blurbs = readme_blurbs()
        assert [i.split(":", 1)[0] for i in items] == names
        assert all(i.split(": ", 1)[1] == blurbs[n] for i, n in zip(items, names))
        lab.click()
        p.wait_for_selector(".mmu-pane[data-mode=shadow]", timeout=90_000)
        p.wait_for_load_state("networkidle")
        projector_shot(p, "app-lab-720")
        p.close()
    assert outside == []


def test_quick_room_and_latency_benchmark():
    """The quick version of ./run bench-browser: 3 preheated sessions x 4 changes,
    figures printed as `name: value unit`, every change answered within 1 s and
    nothing in the server's log (the full run is in benchmarks/RESULTS.md)."""
    import re
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "benchmarks/bench_browser.py", "--clicks", "5",
                        "--sessions", "3", "--changes", "4", "--stagger", "0.5", "--think", "0.3"],
                       cwd=B.ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines())
    assert all(re.fullmatch(r"[\d.,]+ [a-zA-Z]+", v) for v in lines.values()), lines
    assert lines["load_join_failures"] == "0 count" and lines["load_server_errors"] == "0 count"
    assert lines["load_answered_within_1s"] == "12 count" and lines["load_errors_or_late"] == "0 count"


def test_run_lab_passes_arguments_and_serves_the_project_root():
    """`./run lab --no-browser --port=N` (as root here, where Jupyter wants
    --allow-root) serves the project root: notebooks, scenarios and docs can be
    browsed, and Notebook 7's /tree answers too."""
    import json
    import re
    import subprocess
    import time
    import urllib.request
    port = B.free_port()
    log = B.LOGS / "run-lab.log"
    B.LOGS.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(["./run", "lab", "--no-browser", f"--port={port}",
                                 "--ServerApp.ip=127.0.0.1"], cwd=B.ROOT, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        token = None
        deadline = time.time() + 300             # the first run installs requirements.txt
        while token is None and time.time() < deadline and proc.poll() is None:
            time.sleep(1)
            m = re.search(rf"127\.0\.0\.1:{port}/lab/tree/notebooks/00-index\.ipynb\?token=(\w+)",
                          log.read_text(errors="replace"))
            token = m and m.group(1)
        assert token, B.log_tail(log)
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/api/contents?token={token}", timeout=30) as r:
            names = {c["name"] for c in json.load(r)["content"]}
        assert {"notebooks", "scenarios", "docs", "README.md"} <= names
        with urllib.request.urlopen(f"{base}/tree?token={token}", timeout=30) as r:
            assert r.status == 200 and "Jupyter Notebook" in r.read().decode()
    finally:
        import os
        import signal
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
