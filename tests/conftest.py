"""Shared helpers: run a library scenario under an era/mode/vendor."""
from __future__ import annotations

from pathlib import Path

import pytest

from mmu_model import load_scenario, run_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "mmu_model" / "scenarios"


def run(name: str, era: str, mode: str, vendor: str = "vmx") -> list[dict]:
    """The steps of scenarios/<name>.json under the given era, mode and vendor."""
    return run_scenario(load_scenario(SCENARIOS / f"{name}.json"), era, mode, vendor)["steps"]


@pytest.fixture
def scenario_dir() -> Path:
    return SCENARIOS


@pytest.fixture(autouse=True)
def _eras_as_they_were():
    """A test that registers variants (a --variants file run in-process, say)
    leaves the registry as it found it."""
    from mmu_model.eras import ERAS
    before = dict(ERAS)
    yield
    ERAS.clear()
    ERAS.update(before)
