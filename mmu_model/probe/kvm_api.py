"""The slice of the KVM userspace API the probe drives, from plain Python.

ioctl numbers and struct layouts are written out from the kernel's uapi
headers (no C compiler, no bindings): include/uapi/linux/kvm.h (the ioctls,
``struct kvm_run``, ``struct kvm_userspace_memory_region``, the binary stats
header and descriptor) and arch/x86/include/uapi/asm/kvm.h (``struct
kvm_regs``, ``struct kvm_segment``, ``struct kvm_dtable``, ``struct
kvm_sregs``, ``struct kvm_cpuid2``/``kvm_cpuid_entry2``, ``struct
kvm_msrs``).  The layouts are checked by size in tests/test_probe.py against
the sizes the headers' ioctl numbers encode.

Everything here is a thin wrapper: a :class:`Kvm` for /dev/kvm, a :class:`Vm`
and a :class:`Vcpu` owning their fds (and the vCPU's ``kvm_run`` mapping);
``close()`` releases them and the probe calls it on every path.
"""
from __future__ import annotations

import ctypes
import fcntl
import mmap
import os

# --- ioctl number encoding: include/uapi/asm-generic/ioctl.h --------------
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr):
    return _ioc(0, nr, 0)


def _ior(nr, struct):
    return _ioc(_IOC_READ, nr, ctypes.sizeof(struct))


def _iow(nr, struct):
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(struct))


def _iowr(nr, struct):
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(struct))


KVMIO = 0xAE
KVM_API_VERSION = 12

u8, u16, u32, u64, s16 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int16


# --- arch/x86/include/uapi/asm/kvm.h ---------------------------------------
class kvm_regs(ctypes.Structure):
    _fields_ = [(n, u64) for n in ("rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 "
                                   "r14 r15 rip rflags").split()]


class kvm_segment(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
                ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8),
                ("avl", u8), ("unusable", u8), ("padding", u8)]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class kvm_sregs(ctypes.Structure):
    _fields_ = ([(n, kvm_segment) for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")]
                + [("gdt", kvm_dtable), ("idt", kvm_dtable)]
                + [(n, u64) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")]
                + [("interrupt_bitmap", u64 * 4)])      # (KVM_NR_INTERRUPTS + 63) / 64


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32),
                ("ebx", u32), ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


class kvm_cpuid2(ctypes.Structure):                     # header; entries follow
    _fields_ = [("nent", u32), ("padding", u32)]


class kvm_msr_entry(ctypes.Structure):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(ctypes.Structure):                       # header; entries follow
    _fields_ = [("nmsrs", u32), ("pad", u32)]


# --- include/uapi/linux/kvm.h -----------------------------------------------
class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64),
                ("memory_size", u64), ("userspace_addr", u64)]


class kvm_run_io(ctypes.Structure):                     # the KVM_EXIT_IO member of the union
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32),
                ("data_offset", u64)]


class kvm_run_internal(ctypes.Structure):               # KVM_EXIT_INTERNAL_ERROR
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_fail_entry(ctypes.Structure):             # KVM_EXIT_FAIL_ENTRY
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_exit(ctypes.Union):
    _fields_ = [("io", kvm_run_io), ("internal", kvm_run_internal),
                ("fail_entry", kvm_run_fail_entry), ("padding", ctypes.c_char * 256)]


class kvm_run(ctypes.Structure):                        # the head of the mmap'ed kvm_run
    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
                ("flags", u16), ("cr8", u64), ("apic_base", u64), ("exit", kvm_run_exit)]


class kvm_stats_header(ctypes.Structure):
    _fields_ = [("flags", u32), ("name_size", u32), ("num_desc", u32), ("id_offset", u32),
                ("desc_offset", u32), ("data_offset", u32)]


class kvm_stats_desc(ctypes.Structure):                 # the name (name_size bytes) follows
    _fields_ = [("flags", u32), ("exponent", s16), ("size", u16), ("offset", u32),
                ("bucket_size", u32)]


KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, kvm_cpuid2)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, kvm_userspace_memory_region)
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, kvm_regs)
KVM_SET_REGS = _iow(0x82, kvm_regs)
KVM_GET_SREGS = _ior(0x83, kvm_sregs)
KVM_SET_SREGS = _iow(0x84, kvm_sregs)
KVM_SET_MSRS = _iow(0x89, kvm_msrs)
KVM_SET_CPUID2 = _iow(0x90, kvm_cpuid2)
KVM_GET_STATS_FD = _io(0xce)

KVM_CAP_X86_SMM = 117
KVM_CAP_BINARY_STATS_FD = 203

# exit reasons
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_IO_OUT = 1
EXIT_NAMES = {0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 5: "HLT", 6: "MMIO", 8: "SHUTDOWN",
              9: "FAIL_ENTRY", 17: "INTERNAL_ERROR"}

# binary stats descriptor flags
KVM_STATS_TYPE_MASK = 0xF
KVM_STATS_TYPE_NAMES = {0: "cumulative", 1: "instant", 2: "peak", 3: "linear_hist",
                        4: "log_hist"}

DEV_KVM = "/dev/kvm"


class KvmUnavailable(Exception):
    """/dev/kvm is missing or not usable: one line for the user."""


class Kvm:
    """An open /dev/kvm."""

    def __init__(self, path: str | None = None):
        path = path or DEV_KVM
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(f"{path}: no such device (this machine has no KVM)") from None
        except PermissionError:
            raise KvmUnavailable(f"{path}: permission denied (join the 'kvm' group, or run "
                                 "as a user who may open it)") from None
        except OSError as err:
            raise KvmUnavailable(f"{path}: {err.strerror}") from None
        self.cache: dict = {}              # answers that never change for this KVM
        version = fcntl.ioctl(self.fd, KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            self.close()
            raise KvmUnavailable(f"{path}: KVM API version {version}, expected {KVM_API_VERSION}")

    def check_extension(self, cap: int) -> int:
        return fcntl.ioctl(self.fd, KVM_CHECK_EXTENSION, cap)

    def supported_cpuid(self) -> ctypes.Array:
        """KVM_GET_SUPPORTED_CPUID, growing the buffer until it fits (E2BIG)."""
        n = 64
        while True:
            buf = (ctypes.c_char * (ctypes.sizeof(kvm_cpuid2) + n * ctypes.sizeof(kvm_cpuid_entry2)))()
            kvm_cpuid2.from_buffer(buf).nent = n
            try:
                fcntl.ioctl(self.fd, KVM_GET_SUPPORTED_CPUID, buf)
                return buf
            except OSError as err:
                if err.errno != 7 or n > 4096:          # E2BIG: try a bigger buffer
                    raise
                n *= 2

    def vcpu_mmap_size(self) -> int:
        return fcntl.ioctl(self.fd, KVM_GET_VCPU_MMAP_SIZE)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def cpuid_entries(buf) -> list:
    head = kvm_cpuid2.from_buffer(buf)
    base = ctypes.sizeof(kvm_cpuid2)
    size = ctypes.sizeof(kvm_cpuid_entry2)
    return [kvm_cpuid_entry2.from_buffer(buf, base + i * size) for i in range(head.nent)]


class Vm:
    """A VM fd with one memory slot of anonymous memory at GPA 0."""

    def __init__(self, kvm: Kvm, mem_size: int):
        self.kvm = kvm
        self.fd = fcntl.ioctl(kvm.fd, KVM_CREATE_VM, 0)
        self.vcpus: list[Vcpu] = []
        self.mem = mmap.mmap(-1, mem_size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))   # exported until close
        region = kvm_userspace_memory_region(slot=0, flags=0, guest_phys_addr=0,
                                             memory_size=mem_size, userspace_addr=addr)
        fcntl.ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, region)

    def create_vcpu(self) -> "Vcpu":
        vcpu = Vcpu(self, len(self.vcpus))
        self.vcpus.append(vcpu)
        return vcpu

    def stats_fd(self) -> int:
        return fcntl.ioctl(self.fd, KVM_GET_STATS_FD)

    def close(self):
        for v in self.vcpus:
            v.close()
        self.vcpus = []
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.mem is not None:
            try:
                self.mem.close()
            except BufferError:     # a ctypes view still exports it; the GC frees it
                pass
            self.mem = None


class Vcpu:
    """A vCPU fd and its kvm_run page."""

    def __init__(self, vm: Vm, index: int):
        self.index = index
        self.fd = fcntl.ioctl(vm.fd, KVM_CREATE_VCPU, index)
        self.run_map = mmap.mmap(self.fd, vm.kvm.vcpu_mmap_size(), mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_struct = kvm_run.from_buffer(self.run_map)

    def run(self) -> int:
        """KVM_RUN once; the exit reason.  A signal that interrupts KVM_RUN
        (EINTR) only means: run again."""
        while True:
            try:
                fcntl.ioctl(self.fd, KVM_RUN, 0)
                return self.run_struct.exit_reason
            except InterruptedError:
                continue

    def get_regs(self) -> kvm_regs:
        r = kvm_regs()
        fcntl.ioctl(self.fd, KVM_GET_REGS, r)
        return r

    def set_regs(self, r: kvm_regs):
        fcntl.ioctl(self.fd, KVM_SET_REGS, r)

    def get_sregs(self) -> kvm_sregs:
        s = kvm_sregs()
        fcntl.ioctl(self.fd, KVM_GET_SREGS, s)
        return s

    def set_sregs(self, s: kvm_sregs):
        fcntl.ioctl(self.fd, KVM_SET_SREGS, s)

    def set_cpuid(self, buf):
        fcntl.ioctl(self.fd, KVM_SET_CPUID2, buf)

    def set_msr(self, index: int, value: int):
        buf = (ctypes.c_char * (ctypes.sizeof(kvm_msrs) + ctypes.sizeof(kvm_msr_entry)))()
        kvm_msrs.from_buffer(buf).nmsrs = 1
        e = kvm_msr_entry.from_buffer(buf, ctypes.sizeof(kvm_msrs))
        e.index, e.data = index, value
        n = fcntl.ioctl(self.fd, KVM_SET_MSRS, buf)
        if n != 1:
            raise OSError(22, f"KVM_SET_MSRS refused MSR {index:#x}")

    def stats_fd(self) -> int:
        return fcntl.ioctl(self.fd, KVM_GET_STATS_FD)

    def close(self):
        if self.fd is None:
            return
        del self.run_struct
        self.run_map.close()
        os.close(self.fd)
        self.fd = None
