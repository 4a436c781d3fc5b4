"""A model of how Linux KVM on x86 manages MMU roots, per kernel era.

Start with :class:`Simulation` or :func:`run_scenario`.  The package is in
layers, each a subpackage that imports only the layers below it:

* :mod:`.kernel` - the mirrored kernel: one Python function per kernel
  function, under its name (registers, roles, the kvm structs, requests, mmu,
  tdp_mmu, x86, smm, nested, vendor, trace);
* :mod:`.eras` - the eras: the :class:`Era` mechanism and one module per
  kernel or posting;
* :mod:`.arch` - the architecture's side: the guest's page tables, the TLBs it
  may observe and the checker (consulted by the harness, never by the kernel);
* :mod:`.harness` - running scenarios: simulation, scenario files, outcomes,
  invariants, text rendering;
* :mod:`.analysis` - what is built on runs: compare, cost, search, ablate;
* :mod:`.classroom` - the notebooks' widgets, plots, quiz and review helpers
  (the only layer that imports ipywidgets or matplotlib);
* :mod:`.cli` - ``python -m mmu_model``.

``tests/test_layers.py`` checks that imports run this way and never in a circle.

Bad input - a scenario file or document, an argument of :class:`Simulation`,
an event, a search's arguments - raises :class:`ScenarioError` (a
``ValueError``), whose message is one line naming where and what; the command
line prints it and exits 2 (docs/contract.md, "Errors").
"""
from .analysis.ablate import NO_PCIDE_UNLOAD
from .eras import DEFAULT_ERA, Era, all_eras, get_era, register_era
from .harness.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from .harness.sim import Simulation, run_scenario

# A variant for the checker, defined by the ablation (README, "Could the guest
# see a stale translation?"): registered here, above both layers.
register_era(NO_PCIDE_UNLOAD)

__all__ = ["DEFAULT_ERA", "Era", "Scenario", "ScenarioError", "Simulation", "all_eras",
           "get_era", "load_scenario", "parse_scenario", "register_era", "run_scenario"]
