"""The eras: pinned kernel behaviours, by name.

:mod:`.era` is the mechanism (the :class:`Era` record, :meth:`Era.derive`);
one module per kernel or posting defines each era from it
(``v5_15``, ``v5_17``, ``v5_18`` with v5.19, ``v6_18`` with v6.4, ``seed`` for
the never-merged series and the review's sketch).  This module is the registry
that the CLI, scenarios and ``compare`` look eras up in.

May import: the kernel mirror and its own modules; nothing above it.
"""
from __future__ import annotations

from .era import CORE_FUNCTIONS, Era, with_flush_on_reuse
from .seed import REVIEW_SKETCH, SEED_V1, SEED_V2
from .v5_15 import V5_15
from .v5_17 import V5_17
from .v5_18 import V5_18, V5_19
from .v6_18 import V6_4, V6_18

__all__ = ["CORE_FUNCTIONS", "DEFAULT_ERA", "ERAS", "Era", "all_eras", "get_era", "register_era",
           "with_flush_on_reuse"]

DEFAULT_ERA = "v6.18"

# In kernel order; the two eras from the review come last.  Variants that an
# analysis defines (v6.18~no-pcide-unload) are registered by the package's
# __init__, after these.
ERAS: dict[str, Era] = {era.name: era for era in (V5_15, V5_17, SEED_V1, V5_18, V5_19, V6_4, V6_18,
                                                  SEED_V2, REVIEW_SKETCH)}


def register_era(era: Era) -> Era:
    """Make ``era`` available by name (CLI ``--era``, scenarios, compare)."""
    ERAS[era.name] = era
    return era


def get_era(name: str) -> Era:
    """The era called ``name``; KeyError naming the known eras otherwise."""
    try:
        return ERAS[name]
    except KeyError:
        raise KeyError(f"unknown era {name!r} (expected one of: {', '.join(ERAS)})") from None


def all_eras() -> list[Era]:
    return list(ERAS.values())
