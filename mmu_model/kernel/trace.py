"""The kernel call trace, as data owned by the VM.

One small mechanism: every mirrored kernel function is reached through the
VM's ``ops`` table; when tracing is on, each entry records its depth and name
on the VM's :class:`Trace` before running.  Renderers turn the calls into
ftrace ``function_graph`` text, a table, or plot data.
"""
from __future__ import annotations

from functools import wraps


class Trace:
    """The calls recorded for one VM, in call order (preorder): ``names`` and
    ``depths`` side by side (a step's outcome copies both as they are)."""
    __slots__ = ("names", "depths", "depth")

    def __init__(self):
        self.names: list[str] = []
        self.depths: list[int] = []
        self.depth = 0

    @property
    def calls(self) -> list[tuple[int, str]]:
        """The calls as (depth, name) pairs."""
        return list(zip(self.depths, self.names))

    def mark(self) -> int:
        """A position to slice the calls of one step from."""
        return len(self.names)

    def since(self, mark: int) -> list[tuple[int, str]]:
        return list(zip(self.depths[mark:], self.names[mark:]))

    def clear(self) -> None:
        """Forget the calls recorded so far (the lists stay the same objects)."""
        del self.names[:], self.depths[:]


def traced(trace: Trace, name: str, fn):
    """Wrap ``fn`` so that each call records ``name`` at the current depth."""
    add_name, add_depth = trace.names.append, trace.depths.append

    @wraps(fn)
    def wrapper(*args, **kwargs):
        depth = trace.depth
        add_depth(depth)
        add_name(name)
        trace.depth = depth + 1
        try:
            return fn(*args, **kwargs)
        finally:
            trace.depth = depth
    wrapper.kernel_name = name
    return wrapper


def function_graph(calls: list[tuple[int, str]]) -> str:
    """Render calls as ftrace's function_graph tracer indents them."""
    lines, open_depths = [], []
    for i, (depth, name) in enumerate(calls):
        while open_depths and open_depths[-1] >= depth:
            lines.append("  " * open_depths.pop() + "}")
        nested = i + 1 < len(calls) and calls[i + 1][0] > depth
        lines.append("  " * depth + name + ("() {" if nested else "();"))
        if nested:
            open_depths.append(depth)
    while open_depths:
        lines.append("  " * open_depths.pop() + "}")
    return "\n".join(lines)
