"""Golden traces: the `run --trace` text of canonical scenarios, committed.

Regenerate only when a change in behaviour is understood and intended, and
say in the commit why each file changed:

    .venv/bin/python tests/golden.py --write
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmu_model import load_scenario, run_scenario  # noqa: E402
from mmu_model.harness.render import step_graph, step_table  # noqa: E402

GOLDEN = ROOT / "tests" / "golden"
ERAS = ("v5.15", "v5.17", "seed-v1", "v5.18", "v5.19", "v6.4", "v6.18", "seed-v2", "review-sketch")
MODES = ("shadow", "tdp", "tdp-legacy")
# SVM differs from VMX only in what exits; these scenarios show it.
SVM_SCENARIOS = ("cr0-wp-toggle", "cr4-pge-toggle", "invpcid", "boot-to-long-mode")
# Library scenarios also run as L2 under nested TDP (the reference's NTDP column).
NESTED_COLUMN = ("cr0-pg-off-on", "cr4-pcide-on", "cr4-pge-toggle", "efer-nx-toggle", "smi-rsm")
# Nested scenarios without VMX-only events (INVEPT, INVVPID, EPTP flags), also on SVM.
SVM_NESTED = ("nested-entry-exit", "nested-l2-cr0-wp-toggle", "nested-smi-in-l2")


def cases():
    for path in sorted((ROOT / "mmu_model" / "scenarios").glob("*.json")):
        sc = load_scenario(path)
        modes = (sc.mode,) if sc.vcpus > 1 else MODES
        if path.stem in NESTED_COLUMN:
            modes += ("nested-tdp",)
        for era in ERAS:
            for mode in modes:
                yield sc, era, mode, "vmx"
                if path.stem in SVM_SCENARIOS:
                    yield sc, era, mode, "svm"
    for path in sorted((ROOT / "mmu_model" / "scenarios" / "nested").glob("*.json")):
        sc = load_scenario(path)
        for era in ERAS:
            yield sc, era, "nested-tdp", "vmx"
            if path.stem in SVM_NESTED:
                yield sc, era, "nested-tdp", "svm"


def render(sc, era, mode, vendor) -> str:
    doc = run_scenario(sc, era, mode, vendor)
    parts = [step_table(doc, sc.events)]
    for s in doc["steps"]:
        parts.append(f"\n--- step {s['index']} ({s['op']}) ---\n" + (step_graph(s) or "(no VM exit)"))
    return "\n".join(parts) + "\n"


def path_for(sc, era, mode, vendor) -> Path:
    return GOLDEN / sc.name / f"{era}-{mode}-{vendor}.txt"


# Presets from history: one compare of every era and variant per preset.
def history_cases():
    from mmu_model import all_eras
    for path in sorted((ROOT / "mmu_model" / "scenarios" / "history").glob("*.json")):
        sc = load_scenario(path)
        modes = ("shadow", "tdp", "tdp-legacy") if sc.vcpus == 1 else (sc.mode, "tdp-legacy")
        yield sc, tuple((e.name, m, sc.vendor) for e in all_eras() for m in modes)


def render_compare(sc, runs) -> str:
    from mmu_model.analysis.compare import compare, compare_table
    return compare_table(compare(sc, list(runs))) + "\n"


def compare_path(sc) -> Path:
    return GOLDEN / "history" / f"{sc.name}.txt"


# The clarification tables: each unload / flush request of an era removed in
# turn, 2000 programs per row and mode.
ABLATION_ERAS = ("v6.18", "seed-v1")
ABLATION_EXAMPLES = 2000


def render_ablation(era) -> str:
    from mmu_model.analysis.ablate import ablation_table, ablation_text
    return ablation_text(era, ablation_table(era, examples=ABLATION_EXAMPLES)) + "\n"


def ablation_path(era) -> Path:
    return GOLDEN / "ablation" / f"{era}.txt"


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: tests/golden.py --write   (rewrites every golden file)")
    n = 0
    for case in cases():
        p = path_for(*case)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(render(*case))
        n += 1
    for sc, runs in history_cases():
        p = compare_path(sc)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(render_compare(sc, runs))
        n += 1
    for era in ABLATION_ERAS:
        p = ablation_path(era)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(render_ablation(era))
        n += 1
    print(f"wrote {n} golden files under {GOLDEN}")
