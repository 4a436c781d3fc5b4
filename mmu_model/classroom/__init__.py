"""What the notebooks show: the only layer that imports ipywidgets or matplotlib.

* ``widgets`` - the lab, the role explorer, the root-cache widget (factories
  that return widget trees; diagrams are HTML in an HTML widget);
* ``plots`` - charts (inline matplotlib) and their tables;
* ``quiz`` - seeded "predict, then check" questions;
* ``review`` - notebook 07's experiments on the seed thread's claims.

May import: anything below it.
"""
