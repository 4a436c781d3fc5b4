"""Analyses built on runs of the harness.

* ``compare`` - one scenario under several eras/modes/vendors, step by step;
* ``cost`` - an estimate in cycles of what each step costs;
* ``search`` - seeded random guest programs and the shortest violation;
* ``ablate`` - each root unload / flush request removed in turn, searched.

May import: the harness and everything below it; never the classroom.
"""
