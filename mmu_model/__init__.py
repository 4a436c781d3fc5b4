"""A model of how Linux KVM on x86 manages MMU roots, per kernel era.

The core (this package minus ``widgets``/``plots``) imports no UI library.
Start with :class:`Simulation` or :func:`run_scenario`; eras are in
:mod:`mmu_model.eras`, the scenario format in :mod:`mmu_model.scenario`.
"""
from .eras import DEFAULT_ERA, Era, all_eras, get_era, register_era
from .scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from .sim import Simulation, run_scenario

__all__ = ["DEFAULT_ERA", "Era", "Scenario", "ScenarioError", "Simulation", "all_eras",
           "get_era", "load_scenario", "parse_scenario", "register_era", "run_scenario"]
