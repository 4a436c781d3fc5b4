"""The zero-install classroom: the notebooks and the lab as a static JupyterLite site.

The site runs Python in each student's browser (Pyodide, CPython compiled to
WebAssembly), so any static host serves any number of students and the teacher
runs nothing.  Everything comes from the package registries, every version
pinned in lite/:

* lite/requirements.txt: the builder's own environment (.venv-lite):
  jupyterlite-core and jupyterlite-pyodide-kernel 0.8.6, which pins Pyodide
  314.0.6 (Python 3.14), jupyter_server (needed to add contents) and
  jupyterlab_widgets (the widgets' lab extension).
* lite/package.json + package-lock.json: the npm package ``pyodide`` 314.0.6,
  the runtime (pyodide.asm.wasm, python_stdlib.zip, pyodide-lock.json) but no
  wheels.  It goes to lite_dir/static/pyodide, where the kernel's addon finds
  it (the build's ``--pyodide DIR`` option did not work).
* lite/wheels.txt: the pure-Python wheels the kernel needs, from PyPI, hashes
  pinned.  Their sha256 differ from those in Pyodide's own lock, so this
  writes the lock (static/pyodide/pyodide-lock.json) itself, for exactly the
  wheels it ships: the kernel's own (piplite, pyodide-kernel and the stand-ins
  for ipykernel and widgetsnbextension that come with the kernel's package),
  PyPI's, and the project's wheel (``pip wheel --no-deps .``).  They are
  preloaded (``loadPyodideOptions.packages``), so no notebook needs a ``%pip``
  cell, and ``disablePyPIFallback`` keeps the kernel off the internet.

Downloads are cached (pip's and npm's caches, and the wheels and npm tree in
$MMU_LITE_CACHE, default ~/.cache/mmu-model-lite), so a second build does not
download again; a build whose inputs did not change is reused as it is.

    ./run lite                  # build into lite-site/ (git-ignored)
    ./run lite --serve          # build if stale, serve on http://127.0.0.1:8000/
    python3 tools/lite.py --serve --port 8100 --out /tmp/site

A teacher publishes the site by copying lite-site/ to any static web host.
"""
from __future__ import annotations

import argparse
import email.parser
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LITE = ROOT / "lite"
OUT = ROOT / "lite-site"
NOTEBOOKS = ROOT / "notebooks"
STAGE = ROOT / "build" / "lite-src"
VENV = ROOT / ".venv-lite"
CACHE = Path(os.environ.get("MMU_LITE_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmu-model-lite")
PYODIDE_VERSION = "314.0.6"
KERNEL_EXT = "share/jupyter/labextensions/@jupyterlite/pyodide-kernel-extension"
# The kernel's own wheels, shipped inside jupyterlite-pyodide-kernel.
KERNEL_WHEELS = ("piplite-", "pyodide_kernel-", "ipykernel-", "widgetsnbextension-4.")
# What Pyodide loads before the kernel starts: the kernel skips installing what
# is listed here, and the lock's dependencies bring the rest.
PRELOAD = ["micropip", "piplite", "ipykernel", "comm", "pyodide-kernel", "jedi", "ipython",
           "ipywidgets", "mmu-model"]
# The runtime files of the npm package the site needs (not its types, maps or demos).
RUNTIME = ("pyodide.asm.mjs", "pyodide.asm.wasm", "pyodide.mjs", "pyodide.js",
           "python_stdlib.zip")
# Requirement markers as Pyodide's Python sees them.
PYODIDE_ENV = {"sys_platform": "emscripten", "platform_system": "Emscripten",
               "python_version": "3.14", "python_full_version": "3.14.2",
               "implementation_name": "cpython", "platform_python_implementation": "CPython",
               "platform_machine": "wasm32", "os_name": "posix", "extra": ""}
APPS = ("lab", "notebooks", "tree")
MIME = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
        ".json": "application/json", ".whl": "application/zip", ".zip": "application/zip",
        ".ipynb": "application/json", ".svg": "image/svg+xml", ".css": "text/css"}


class BuildError(Exception):
    pass


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest(*paths: Path) -> str:
    """One hash over files (directories: every file under them, by relative path)."""
    h = hashlib.sha256()
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(str(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    r = subprocess.run([str(c) for c in cmd], **kw)
    if r.returncode:
        raise BuildError(f"{Path(str(cmd[0])).name} exited {r.returncode}: {' '.join(map(str, cmd))}")
    return r


# ---------------------------------------------------------------------------
# The inputs, each cached

def builder() -> Path:
    """.venv-lite with lite/requirements.txt installed; its python."""
    py = VENV / "bin" / "python"
    stamp = VENV / f".installed-{digest(LITE / 'requirements.txt')}"
    if not stamp.exists():
        if not py.exists():
            run([sys.executable, "-m", "venv", VENV])
        run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-r", LITE / "requirements.txt"])
        stamp.touch()
    return py


def npm_pyodide() -> Path:
    """The npm package pyodide, installed from lite/package-lock.json; its folder."""
    where = CACHE / f"npm-{digest(LITE / 'package.json', LITE / 'package-lock.json')}"
    pkg = where / "node_modules" / "pyodide"
    if not (pkg / "pyodide.mjs").exists():
        npm = shutil.which("npm")
        if not npm:
            raise BuildError("npm is not installed (Debian: apt-get install -y npm)")
        where.mkdir(parents=True, exist_ok=True)
        for f in ("package.json", "package-lock.json"):
            shutil.copy(LITE / f, where / f)
        run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=where)
    version = json.loads((pkg / "package.json").read_text())["version"]
    if version != PYODIDE_VERSION:
        raise BuildError(f"lite/package-lock.json: pyodide {version}, the kernel needs {PYODIDE_VERSION}")
    return pkg


def pypi_wheels(py: Path) -> list[Path]:
    """lite/wheels.txt's wheels, downloaded once (hashes checked by pip)."""
    where = CACHE / f"wheels-{digest(LITE / 'wheels.txt')}"
    done = where / ".complete"
    if not done.exists():
        where.mkdir(parents=True, exist_ok=True)
        run([py, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "--python-version", "3.14", "--require-hashes",
             "-d", where, "-r", LITE / "wheels.txt"])
        done.touch()
    return sorted(where.glob("*.whl"))


def kernel_wheels() -> list[Path]:
    pypi = VENV / KERNEL_EXT / "static" / "pypi"
    found = sorted(w for w in pypi.glob("*.whl") if w.name.startswith(KERNEL_WHEELS))
    if len(found) != len(KERNEL_WHEELS):
        raise BuildError(f"{pypi}: expected wheels {KERNEL_WHEELS}, found {[w.name for w in found]}")
    return found


def project_wheel(py: Path, dest: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        run([py, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--no-build-isolation", "-w", tmp, ROOT])
        (whl,) = Path(tmp).glob("mmu_model-*.whl")
        return Path(shutil.copy(whl, dest))


# ---------------------------------------------------------------------------
# The lock

def wheel_meta(whl: Path) -> tuple[email.message.Message, list[str]]:
    """(METADATA, top-level import names) of a wheel."""
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
        if f"{info}/top_level.txt" in names:
            tops = z.read(f"{info}/top_level.txt").decode().split()
        else:
            tops = sorted({n.split("/")[0].removesuffix(".py") for n in names
                           if "/" in n and not n.split("/")[0].endswith((".dist-info", ".data"))
                           or n.endswith(".py") and "/" not in n})
    return meta, [t for t in tops if t and not t.startswith("_")] or tops


def lock_entries(wheels: list[Path], py: Path) -> dict:
    """pyodide-lock.json ``packages`` entries for ``wheels``; each one's depends are
    its requirements under Pyodide's markers, and every one must be shipped."""
    code = r"""
import json, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
env, reqs = json.loads(sys.stdin.read())
print(json.dumps({k: [canonicalize_name(r.name) for r in map(Requirement, v)
                      if r.marker is None or r.marker.evaluate(env)] for k, v in reqs.items()}))
"""
    metas = {w: wheel_meta(w) for w in wheels}
    reqs = {w.name: m.get_all("Requires-Dist") or [] for w, (m, _) in metas.items()}
    deps = json.loads(subprocess.run([str(py), "-c", code], input=json.dumps([PYODIDE_ENV, reqs]),
                                     capture_output=True, text=True, check=True).stdout)
    entries = {}
    for w, (meta, imports) in metas.items():
        key = canon(meta["Name"])
        entries[key] = {"name": meta["Name"], "version": meta["Version"], "file_name": w.name,
                        "install_dir": "site", "sha256": sha256(w), "package_type": "package",
                        "imports": imports, "depends": deps[w.name], "unvendored_tests": False,
                        "shared_library": False}
    for key, e in entries.items():
        missing = [d for d in e["depends"] if d not in entries]
        if missing:
            raise BuildError(f"lite/wheels.txt: {e['file_name']} needs {missing}, which no wheel provides")
    return dict(sorted(entries.items()))


def canon(name: str) -> str:
    return "-".join(name.replace("_", "-").replace(".", "-").lower().split("-"))


# ---------------------------------------------------------------------------
# The site

def inputs_digest(notebooks: Path = NOTEBOOKS) -> str:
    """What the site is made of: a site built from the same digest is fresh."""
    return digest(LITE, ROOT / "mmu_model", Path(notebooks).resolve(), ROOT / "pyproject.toml",
                  Path(__file__).resolve())


def fresh(out: Path = OUT, notebooks: Path = NOTEBOOKS) -> bool:
    stamp = out / "build-info.json"
    try:
        return json.loads(stamp.read_text())["inputs"] == inputs_digest(notebooks)
    except (OSError, ValueError, KeyError):
        return False


def stage(py: Path, notebooks: Path = NOTEBOOKS) -> Path:
    """build/lite-src: the lite_dir handed to ``jupyter lite build``."""
    if STAGE.exists():
        shutil.rmtree(STAGE)            # also its .jupyterlite.doit.db: a stale one
    pyo = STAGE / "static" / "pyodide"  # silently drops jupyter-lite.json settings
    pyo.mkdir(parents=True)
    npm = npm_pyodide()
    for f in RUNTIME:
        shutil.copy(npm / f, pyo / f)
    wheels = [Path(shutil.copy(w, pyo / w.name)) for w in pypi_wheels(py) + kernel_wheels()]
    wheels.append(project_wheel(py, pyo))
    upstream = json.loads((npm / "pyodide-lock.json").read_text())
    packages = lock_entries(wheels, py)
    missing = [p for p in PRELOAD if p not in packages]
    if missing:
        raise BuildError(f"no wheel provides the preloaded {missing}")
    (pyo / "pyodide-lock.json").write_text(json.dumps({"info": upstream["info"],
                                                       "packages": packages}, indent=1))
    files = STAGE / "files"
    # The .ipynb files and what they show (figures/); their Jupytext text twins
    # would only be duplicates in the student's file browser.
    shutil.copytree(notebooks, files / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.md", "jupytext.toml"))
    # The scenario library, to read and copy from (the notebooks load it from the package).
    shutil.copytree(ROOT / "mmu_model" / "scenarios", files / "scenarios")
    config = {"jupyter-lite-schema-version": 0, "jupyter-config-data": {
        "appName": "KVM MMU Root Lab",
        "exposeAppInBrowser": True,
        "litePluginSettings": {"@jupyterlite/pyodide-kernel-extension:kernel": {
            "disablePyPIFallback": True,
            "loadPyodideOptions": {"packages": PRELOAD}}}}}
    (STAGE / "jupyter-lite.json").write_text(json.dumps(config, indent=1))
    return STAGE


def build(out: Path = OUT, reuse: bool = False, notebooks: Path = NOTEBOOKS) -> Path:
    """Build the site into ``out`` from the notebooks in ``notebooks`` (reused as
    it is if ``reuse`` and fresh)."""
    out, notebooks = Path(out).resolve(), Path(notebooks).resolve()
    if reuse and fresh(out, notebooks):
        print(f"{out}: fresh, reused", file=sys.stderr)
        return out
    py = builder()
    lite_dir = stage(py, notebooks)
    if out.exists():
        shutil.rmtree(out)
    jupyter = VENV / "bin" / "jupyter"
    run([jupyter, "lite", "build", "--lite-dir", lite_dir, "--output-dir", out,
         "--contents", lite_dir / "files", "--no-sourcemaps", "--no-unused-shared-packages",
         *[a for app in APPS for a in ("--apps", app)]], cwd=lite_dir)
    check(out, notebooks)
    landing(out)
    kernel_banner(out)
    (out / "build-info.json").write_text(json.dumps({
        "inputs": inputs_digest(notebooks), "pyodide": PYODIDE_VERSION, "preload": PRELOAD,
        "wheels": sorted(p.name for p in (out / "static" / "pyodide").glob("*.whl"))}, indent=1))
    print(f"built {out}", file=sys.stderr)
    return out


def check(out: Path, notebooks: Path = NOTEBOOKS):
    """The settings that matter reached the built site (a stale doit database once
    dropped them without a word)."""
    cfg = json.loads((out / "jupyter-lite.json").read_text())["jupyter-config-data"]
    k = cfg.get("litePluginSettings", {}).get("@jupyterlite/pyodide-kernel-extension:kernel", {})
    problems = []
    if not cfg.get("exposeAppInBrowser"):
        problems.append("exposeAppInBrowser")
    if k.get("disablePyPIFallback") is not True:
        problems.append("disablePyPIFallback")
    if k.get("loadPyodideOptions", {}).get("packages") != PRELOAD:
        problems.append("loadPyodideOptions.packages")
    if not str(k.get("pyodideUrl", "")).startswith("./static/pyodide/"):
        problems.append(f"pyodideUrl={k.get('pyodideUrl')!r}")
    for nb in notebooks.glob("*.ipynb"):
        if not (out / "files" / "notebooks" / nb.name).exists():
            problems.append(f"files/notebooks/{nb.name}")
    if problems:
        raise BuildError(f"{out / 'jupyter-lite.json'}: the build lost {', '.join(problems)}")


NOTEBOOK_TITLES = {
    "00-index": "What this is, one scenario end to end",
    "01-two-ways": "Shadow pages and TDP: what is a root?",
    "02-mmu-role": "Which register bits are in the role, and why",
    "03-root-cache": "CR3, PCIDs and the root cache",
    "04-lab": "The lab: toggle a bit, watch shadow paging and TDP side by side",
    "05-other-flows": "SMM, KVM_SET_SREGS and INIT",
    "06-at-scale": "The history presets and random workloads",
    "07-review-do-not-unload-roots": "For reviewers: the seed thread's claims",
    "lab": "The lab on its own",
}

LANDING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>KVM MMU Root Lab: the classroom</title>
<!-- Read by every app page of the site (config-utils.js) as the root of its settings. -->
<script id="jupyter-config-data" type="application/json" data-jupyter-lite-root=".">{{}}</script>
<style>
 body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
        color: #111; }}
 a {{ color: #0057a0; }} li {{ margin: .3rem 0; }}
 #prep {{ border: 1px solid #999; padding: .6rem .8rem; margin: 1rem 0; }}
 progress {{ width: 100%; height: 1rem; }}
 code {{ background: #f2f2f2; padding: 0 .2rem; }}
</style></head>
<body>
<h1>KVM MMU Root Lab</h1>
<p>How Linux KVM on x86 manages its MMU roots, kernel era by kernel era. Everything runs in
this browser: Python starts here the first time you open a notebook (about {mb} MB once,
then from the browser's cache). Nothing is installed and nothing runs on a server.</p>
<div id="prep" role="status" aria-live="polite">
 <div id="prep-text">Fetching Python for this browser ({mb} MB)&hellip;</div>
 <progress id="prep-bar" max="{total}" value="0"></progress>
</div>
<h2>The notebooks, in order</h2>
<p>Open one, then <b>Run &rarr; Run All Cells</b>. Each opens on its own page with its own
Python (JupyterLab itself would reopen every notebook opened before, each starting Python).
Its first cell runs when Python has started (the kernel indicator at the top right turns
from &ldquo;starting&rdquo; to idle); that takes half a minute or so the first time.</p>
<ol start="0">
{items}
</ol>
<p><a href="notebooks/index.html?path=notebooks/lab.ipynb">The lab on its own</a>
(<code>lab.ipynb</code>, for a projector) &middot; <a href="lab/index.html">the full
JupyterLab</a> &middot; <a href="tree/index.html">the files</a>.</p>
<p>Your changes are kept in this browser only. Each click in the lab is answered by the
Python in this browser (WebAssembly), a little slower than a course server answers, and slower
still on a busy computer. Charts are drawn by the package here; the server-side notebooks
(<code>./run lab</code>) draw them with matplotlib.</p>
<script>
(async () => {{
  const files = {files};
  const bar = document.getElementById("prep-bar"), text = document.getElementById("prep-text");
  let done = 0;
  try {{
    for (const f of files) {{
      const r = await fetch("static/pyodide/" + f);
      if (!r.ok) throw new Error(f + ": " + r.status);
      const reader = r.body.getReader();
      for (;;) {{
        const {{done: end, value}} = await reader.read();
        if (end) break;
        done += value.length; bar.value = done;
      }}
    }}
    text.textContent = "Python for this browser is ready ({mb} MB fetched): open a notebook.";
  }} catch (e) {{
    text.textContent = "Could not fetch Python (" + e.message + "): reload the page.";
  }}
}})();
</script>
</body></html>
"""


# Shown on a notebook's page until its kernel has answered: Pyodide's start
# takes tens of seconds, and the page would otherwise look ready and do nothing.
BANNER = """<div id="mmu-kernel-banner" role="status" aria-live="polite" style="position: fixed;
 left: 50%; top: 4px; transform: translateX(-50%); z-index: 10000; background: #fff3cd;
 color: #111; border: 1px solid #b8860b; padding: 4px 12px; font: 14px system-ui, sans-serif;">
 Loading the notebook&hellip;</div>
<script>
(() => {
  const el = document.getElementById("mmu-kernel-banner"), t0 = Date.now();
  let asked = false, done = false;
  const tick = () => {
    if (done) { el.remove(); return; }
    const app = window.jupyterapp, w = app && app.shell && app.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    if (k && !asked) { asked = true; k.info.then(() => { done = true; }); }
    const s = Math.round((Date.now() - t0) / 1000);
    el.textContent = k ? `Starting Python in this browser: ${s} s (about a minute the first time, ` +
      "less later). Cells run once it has started." : `Loading the notebook: ${s} s`;
    setTimeout(tick, 500);
  };
  tick();
})();
</script>
"""


def kernel_banner(out: Path):
    """Put BANNER on the pages that open a notebook."""
    for app in ("notebooks", "lab"):
        page = out / app / "index.html"
        text = page.read_text()
        if "</body>" not in text:
            raise BuildError(f"{page}: no </body> to put the start-up notice before")
        page.write_text(text.replace("</body>", BANNER + "</body>", 1))


def landing(out: Path):
    """index.html: the notebooks in reading order, and a progress bar while it
    fetches Pyodide's runtime and wheels into the browser's cache (what the
    first notebook would otherwise fetch with no sign of progress)."""
    import html
    pyo = out / "static" / "pyodide"
    files = list(RUNTIME) + ["pyodide-lock.json"] + sorted(p.name for p in pyo.glob("*.whl"))
    files.remove("pyodide.js")                 # the kernel loads the ES module
    total = sum((pyo / f).stat().st_size for f in files)
    items = "\n".join(
        f'<li><a href="notebooks/index.html?path=notebooks/{nb.name}">{html.escape(nb.stem)}</a>: '
        f'{html.escape(NOTEBOOK_TITLES.get(nb.stem, ""))}</li>'
        for nb in sorted((out / "files" / "notebooks").glob("[0-9]*.ipynb")))
    (out / "index.html").write_text(LANDING.format(
        mb=round(total / 1e6), total=total, items=items, files=json.dumps(files)))


# ---------------------------------------------------------------------------
# Serving

class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with the MIME types a browser insists on for modules and
    WebAssembly (Python 3.11's http.server sends .mjs and .wasm wrongly)."""
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}
    quiet = False

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)


def server(out: Path = OUT, port: int = 0, quiet: bool = True) -> http.server.ThreadingHTTPServer:
    """A server for ``out`` on 127.0.0.1 (``port`` 0: a free one), not started."""
    handler = type("QuietHandler" if quiet else "LoudHandler", (Handler,), {"quiet": quiet})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), partial(handler, directory=str(out)))
    httpd.daemon_threads = True
    return httpd


def serve_in_thread(out: Path = OUT):
    """(server, url): ``out`` served on a free 127.0.0.1 port from a thread; call
    ``server.shutdown()`` to stop it."""
    httpd = server(out)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", action="store_true", help="serve the site on 127.0.0.1 (builds it if stale)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--out", type=Path, default=OUT, help="the site's folder (default lite-site/)")
    ap.add_argument("--notebooks", type=Path, default=NOTEBOOKS,
                    help="the folder of .ipynb files to publish (default notebooks/)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the site is fresh")
    a = ap.parse_args(argv)
    if not a.notebooks.is_dir() or not any(a.notebooks.glob("*.ipynb")):
        print(f"lite: --notebooks {a.notebooks}: no .ipynb files there", file=sys.stderr)
        return 2
    try:
        out = build(a.out, reuse=not a.force, notebooks=a.notebooks)
    except BuildError as e:
        print(f"lite: {e}", file=sys.stderr)
        return 2
    if a.serve:
        httpd = server(out, a.port, quiet=False)
        print(f"serving {out} on http://127.0.0.1:{httpd.server_address[1]}/ (Ctrl-C stops)",
              file=sys.stderr)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
