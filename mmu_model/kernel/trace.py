"""The kernel call trace, as data owned by the VM.

One small mechanism: every mirrored kernel function is reached through the
VM's ``ops`` table; when tracing is on, each entry records ``(depth, name)``
on the VM's :class:`Trace` before running.  Renderers turn the list into
ftrace ``function_graph`` text, a table, or plot data.
"""
from __future__ import annotations

from functools import wraps


class Trace:
    """The calls recorded for one VM, in call order (preorder)."""
    __slots__ = ("calls", "depth")

    def __init__(self):
        self.calls: list[tuple[int, str]] = []
        self.depth = 0

    def mark(self) -> int:
        """A position to slice the calls of one step from."""
        return len(self.calls)

    def since(self, mark: int) -> list[tuple[int, str]]:
        return self.calls[mark:]


def traced(trace: Trace, name: str, fn):
    """Wrap ``fn`` so that each call records ``name`` at the current depth."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        trace.calls.append((trace.depth, name))
        trace.depth += 1
        try:
            return fn(*args, **kwargs)
        finally:
            trace.depth -= 1
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
