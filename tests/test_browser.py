"""The app in a real browser: Voila serves notebooks/lab.ipynb on 127.0.0.1 and
Playwright drives Debian's Chromium.  Screenshots go to artifacts/browser/."""
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


def test_landing_page_lists_the_notebooks_in_reading_order(chromium):
    with B.voila("notebooks/", log="test-landing") as url:
        p = chromium.new_page(viewport={"width": 1280, "height": 720})
        p.goto(url, timeout=60_000)
        p.get_by_text("00-index.ipynb").wait_for(timeout=60_000)
        names = [n.strip() for n in p.inner_text("body").splitlines() if n.strip().endswith(".ipynb")]
        shot(p, "landing")
        p.close()
    numbered = [n for n in names if n[:2].isdigit()]
    assert numbered == sorted(numbered) and numbered[0].startswith("00-index")
    assert "lab.ipynb" in names


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
