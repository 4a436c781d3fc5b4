"""Tracepoints for the probe (``--trace``): a private tracing instance, removed after.

Needs root (or CAP_SYS_ADMIN) for tracefs.  If tracefs is already mounted
the probe uses that mount; if not, it mounts one of its own on a temporary
directory and unmounts it afterwards.  Either way it works only in a tracing
*instance* of its own (``instances/mmu-probe-PID``), with
``set_event_pid`` set to the probe's PID, so the top-level buffer, its
events and ``tracing_on`` are never written: removing the instance leaves
tracing exactly as it was found.

Events: ``kvmmmu:kvm_mmu_get_page`` (arch/x86/kvm/mmu/mmutrace.h; printed
with the page's gfn, role level and "new"/"existing"), which is
kvm_mmu_get_shadow_page()'s lookup: a root lookup is one at the root level.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import tempfile

INSTANCE = "mmu-probe-{pid}"
EVENTS = ("kvmmmu/kvm_mmu_get_page",)
GET_PAGE = re.compile(r"kvm_mmu_get_page: .*\bgfn ([0-9a-f]+) l(\d) .*\b(new|existing)\s*$")


class TraceUnavailable(Exception):
    """tracefs cannot be used here: one line for the user."""


def tracefs_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[2:3] == ["tracefs"]]


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def parse_get_page(text: str) -> list[tuple[int, int, bool]]:
    """(gfn, level, created) for every kvm_mmu_get_page line of a trace."""
    out = []
    for line in text.splitlines():
        m = GET_PAGE.search(line)
        if m:
            out.append((int(m[1], 16), int(m[2]), m[3] == "new"))
    return out


class TraceSession:
    """Context manager: the instance exists (and our mount, if we made one)
    only inside ``with``."""

    def __init__(self):
        self.pipe = None
        self.base = None
        self.mounted = None
        self.instance = None

    def __enter__(self):
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def _open(self):
        mounts = tracefs_mounts()
        if mounts:
            self.base = mounts[0]
        else:
            d = tempfile.mkdtemp(prefix="mmu-probe-tracefs-")
            libc = _libc()
            if libc.mount(b"nodev", d.encode(), b"tracefs", 0, None) != 0:
                err = ctypes.get_errno()
                os.rmdir(d)
                raise TraceUnavailable(f"tracefs: cannot mount it ({os.strerror(err)}; "
                                       "--trace needs root)")
            self.base = self.mounted = d
        if not os.path.isdir(f"{self.base}/events/kvmmmu"):
            raise TraceUnavailable("tracefs: no kvmmmu events (kvm has no MMU tracepoints here)")
        path = f"{self.base}/instances/{INSTANCE.format(pid=os.getpid())}"
        try:
            os.mkdir(path)
        except OSError as err:
            raise TraceUnavailable(f"tracefs: cannot create instance {path}: {err.strerror}") from None
        self.instance = path
        self._write("set_event_pid", str(os.getpid()))
        for ev in EVENTS:
            self._write(f"events/{ev}/enable", "1")
        # A consuming, non-blocking reader: no buffer reset per step (a reset
        # waits for an RCU grace period, milliseconds each).
        self.pipe = os.open(f"{path}/trace_pipe", os.O_RDONLY | os.O_NONBLOCK)

    def _write(self, rel: str, text: str):
        with open(f"{self.instance}/{rel}", "w") as f:
            f.write(text)

    def take(self) -> str:
        """Everything traced since the last take() (consumed from trace_pipe)."""
        chunks = []
        while True:
            try:
                b = os.read(self.pipe, 1 << 16)
            except BlockingIOError:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks).decode(errors="replace")

    def close(self):
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None
        if self.instance:
            try:
                for ev in EVENTS:
                    self._write(f"events/{ev}/enable", "0")
            finally:
                os.rmdir(self.instance)
                self.instance = None
        if self.mounted:
            _libc().umount2(self.mounted.encode(), 0)
            os.rmdir(self.mounted)
            self.mounted = None

    def __exit__(self, *exc):
        self.close()
        return False
