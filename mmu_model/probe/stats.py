"""KVM's binary statistics: read a stats fd (KVM_GET_STATS_FD) by name.

The format (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD"; layouts in
include/uapi/linux/kvm.h): a ``kvm_stats_header``, an id string, then
``num_desc`` descriptors of ``sizeof(kvm_stats_desc) + name_size`` bytes, and
a data block where descriptor *d* owns ``d.size`` u64 values at
``data_offset + d.offset``.  The descriptors never change for an fd, so they
are parsed once; :meth:`StatsReader.read` then preads only the data block.
Reading needs nothing beyond access to the VM or vCPU fd (no root, no debugfs).
"""
from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

from .kvm_api import KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_NAMES, kvm_stats_desc, kvm_stats_header


@dataclass(frozen=True)
class StatDesc:
    name: str
    kind: str          # cumulative, instant, peak, linear_hist, log_hist
    size: int          # number of u64 values
    offset: int        # into the data block


def parse_header(raw: bytes) -> kvm_stats_header:
    if len(raw) < ctypes.sizeof(kvm_stats_header):
        raise ValueError(f"stats header: {len(raw)} bytes, need {ctypes.sizeof(kvm_stats_header)}")
    return kvm_stats_header.from_buffer_copy(raw)


def parse_descriptors(raw: bytes, num_desc: int, name_size: int) -> list[StatDesc]:
    """The descriptors from their raw block (``raw`` starts at desc_offset)."""
    step = ctypes.sizeof(kvm_stats_desc) + name_size
    if len(raw) < num_desc * step:
        raise ValueError(f"stats descriptors: {len(raw)} bytes, need {num_desc * step}")
    out = []
    for i in range(num_desc):
        chunk = raw[i * step:(i + 1) * step]
        d = kvm_stats_desc.from_buffer_copy(chunk)
        name = chunk[ctypes.sizeof(kvm_stats_desc):].split(b"\0", 1)[0].decode()
        out.append(StatDesc(name, KVM_STATS_TYPE_NAMES.get(d.flags & KVM_STATS_TYPE_MASK, "?"),
                            d.size, d.offset))
    return out


def parse_data(raw: bytes, descs: list[StatDesc]) -> dict:
    """name -> int (one value) or list of ints (a histogram)."""
    out = {}
    for d in descs:
        vals = struct.unpack_from(f"<{d.size}Q", raw, d.offset)
        out[d.name] = vals[0] if d.size == 1 else list(vals)
    return out


class StatsReader:
    """One stats fd; owns it until :meth:`close`."""

    def __init__(self, fd: int):
        self.fd = fd
        head = parse_header(os.pread(fd, ctypes.sizeof(kvm_stats_header), 0))
        self.id = os.pread(fd, head.name_size, head.id_offset).split(b"\0", 1)[0].decode()
        step = ctypes.sizeof(kvm_stats_desc) + head.name_size
        self.descs = parse_descriptors(os.pread(fd, head.num_desc * step, head.desc_offset),
                                       head.num_desc, head.name_size)
        self.data_offset = head.data_offset
        self._selected: dict = {}
        self.data_size = max((d.offset + 8 * d.size for d in self.descs), default=0)

    def read(self, names=None) -> dict:
        """Every stat, or only ``names`` (fewer to decode: the probe reads four
        per step)."""
        descs = self.descs if names is None else self.select(tuple(names))
        return parse_data(os.pread(self.fd, self.data_size, self.data_offset), descs)

    def select(self, names: tuple) -> list[StatDesc]:
        if names not in self._selected:
            by_name = {d.name: d for d in self.descs}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise KeyError(f"{self.id}: no stat {', '.join(missing)}")
            self._selected[names] = [by_name[n] for n in names]
        return self._selected[names]

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
