"""Running scenarios: the model's harness (ordinary words, not kernel names).

* ``scenario`` - the scenario file format, its validation and the library;
* ``sim`` - Simulation: a VM under one era/mode/vendor, stepped event by event;
* ``outcome`` - step outcomes and totals in the contract's JSON shape;
* ``invariants`` - the model's own consistency checks (roles, refcounts);
* ``render`` - outcomes as text tables and function_graph traces.

May import: the kernel mirror, the eras and the architecture's side.
"""
