"""What the notebooks show: the only layer that imports ipywidgets or matplotlib.

* ``views`` - the lab's state and its HTML views (pure: no UI library);
* ``widgets`` - the lab, the role explorer, the root-cache widget (factories
  that return widget trees around the views);
* ``plots`` - charts (inline matplotlib) and their tables;
* ``quiz`` - seeded "predict, then check" questions;
* ``review`` - notebook 07's experiments on the seed thread's claims.

May import: anything below it.
"""
