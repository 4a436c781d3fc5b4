"""Scenario events as guest instructions: the mapping is data, testable anywhere.

Each guest event becomes a short, fixed sequence of x86-64 instructions
(encodings from the Intel SDM, vol. 2: MOV to control registers ``0F 22 /r``,
``WRMSR`` ``0F 30``, ``INVLPG`` ``0F 01 /7``, ``MOV r64, imm64`` ``REX.W B8+r``,
``OUT imm8, AL`` ``E6 ib``, ``HLT`` ``F4``).  Two events are the host's, not
the guest's: ``set_sregs`` (KVM_SET_SREGS) and ``wrmsr_efer`` with
``"host": true`` (KVM_SET_MSRS); for them the guest runs no instruction and
the probe does the ioctl at the step's first marker.

Every step ends with two ``OUT`` instructions to marker ports.  On hardware
(VMX, SVM) the first one already follows the step's VM entry, so requests the
step raised are serviced.  When KVM emulates the guest in batches (PVM here),
a request raised by an emulated instruction is serviced at the next entry, so
the probe resumes the vCPU once more after the first marker and reads the
counters at the second, inside the right step.

A guest event whose model outcome is a fault (#GP, #UD) still runs: with no
IDT the exception becomes a triple fault, which KVM reports as
KVM_EXIT_SHUTDOWN at that step.
"""
from __future__ import annotations

# Ports for the step markers: nothing in a VM without an in-kernel irqchip
# claims them, so each OUT is a KVM_EXIT_IO to the probe.
PORT_BEGIN = 0xE0      # a step is about to run (the host does its ioctl here)
PORT_SETTLE = 0xE1     # the step's instruction ran; resume once more
PORT_END = 0xE2        # the step is over: read the counters here

MSR_EFER = 0xC0000080

# mnemonic -> (opcode bytes, immediate size in bytes)
ENCODINGS = {
    "mov rax, imm64": (b"\x48\xb8", 8),
    "mov ecx, imm32": (b"\xb9", 4),
    "mov eax, imm32": (b"\xb8", 4),
    "mov edx, imm32": (b"\xba", 4),
    "mov cr0, rax": (b"\x0f\x22\xc0", 0),
    "mov cr3, rax": (b"\x0f\x22\xd8", 0),
    "mov cr4, rax": (b"\x0f\x22\xe0", 0),
    "wrmsr": (b"\x0f\x30", 0),
    "invlpg [rax]": (b"\x0f\x01\x38", 0),
    "out imm8, al": (b"\xe6", 1),
    "hlt": (b"\xf4", 0),
}

# op -> the instructions, each (mnemonic, where its immediate comes from):
# a field of the resolved event, or a fixed number.
GUEST_OPS = {
    "mov_cr0": (("mov rax, imm64", "value"), ("mov cr0, rax", None)),
    "mov_cr3": (("mov rax, imm64", "value"), ("mov cr3, rax", None)),
    "mov_cr4": (("mov rax, imm64", "value"), ("mov cr4, rax", None)),
    "wrmsr_efer": (("mov ecx, imm32", MSR_EFER), ("mov eax, imm32", "value_lo"),
                   ("mov edx, imm32", "value_hi"), ("wrmsr", None)),
    "invlpg": (("mov rax, imm64", "addr"), ("invlpg [rax]", None)),
}
HOST_OPS = {"set_sregs": "KVM_SET_SREGS", "wrmsr_efer": "KVM_SET_MSRS"}   # wrmsr_efer: host only

STEP_BEGIN = (("out imm8, al", PORT_BEGIN),)
STEP_END = (("out imm8, al", PORT_SETTLE), ("out imm8, al", PORT_END))
PROGRAM_END = (("hlt", None),)

REGS_OF_OP = {"mov_cr0": "cr0", "mov_cr4": "cr4", "wrmsr_efer": "efer"}


def encode(mnemonic: str, imm: int | None = None) -> bytes:
    opcode, size = ENCODINGS[mnemonic]
    if size == 0:
        return opcode
    return opcode + (imm & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def is_host_event(ev: dict) -> bool:
    return ev["op"] == "set_sregs" or (ev["op"] == "wrmsr_efer" and ev.get("host", False))


def resolve(ev: dict, regs: dict) -> dict:
    """The event with its register value made concrete (``set``/``clear``
    applied to ``regs``, the guest's registers before it)."""
    out = dict(ev)
    reg = REGS_OF_OP.get(ev["op"])
    if reg and "value" not in ev:
        out["value"] = (regs[reg] | ev.get("set", 0)) & ~ev.get("clear", 0)
    if "value" in out:
        out["value_lo"] = out["value"] & 0xFFFFFFFF
        out["value_hi"] = out["value"] >> 32
    return out


def instructions(ev: dict) -> list[tuple[str, int | None]]:
    """(mnemonic, immediate) for one resolved event, its markers included."""
    body = () if is_host_event(ev) else GUEST_OPS[ev["op"]]
    out = []
    for mnemonic, src in STEP_BEGIN + body + STEP_END:
        imm = ev[src] if isinstance(src, str) else src
        out.append((mnemonic, imm))
    return out


def assemble(ev: dict) -> bytes:
    return b"".join(encode(m, imm) for m, imm in instructions(ev))


def listing(ev: dict) -> list[str]:
    """Human-readable: ``mov rax, 0x2000`` etc."""
    return [m.replace("imm64", hex(i)).replace("imm32", hex(i)).replace("imm8", hex(i))
            if i is not None else m for m, i in instructions(ev)]


def prologue() -> bytes:
    """Before step 0: let the first VM entry load a root, then stop at a
    PORT_END marker where the probe takes its baseline."""
    return b"".join(encode(m, imm) for m, imm in STEP_END)


def epilogue() -> bytes:
    return b"".join(encode(m, imm) for m, imm in PROGRAM_END)


def next_regs(regs: dict, ev: dict) -> dict:
    """The guest's registers after a resolved event that did not fault, as the
    guest wrote them (KVM may adjust some bits; the probe reads the real ones)."""
    out = dict(regs)
    op = ev["op"]
    if op in REGS_OF_OP:
        out[REGS_OF_OP[op]] = ev["value"]
    elif op == "mov_cr3":
        out["cr3"] = ev["value"]
    elif op == "set_sregs":
        out.update({k: ev[k] for k in ("cr0", "cr3", "cr4", "efer") if k in ev})
    return out


def build(events: list[dict], start: dict, vcpus: int) -> tuple[list[bytes], list[dict]]:
    """Per vCPU, its program (prologue, its steps in scenario order, hlt); and
    the events resolved against each vCPU's registers as the guest wrote them."""
    regs = [dict(start) for _ in range(vcpus)]
    code = [bytearray(prologue()) for _ in range(vcpus)]
    resolved = []
    for ev in events:
        k = ev.get("vcpu", 0)
        r = resolve(ev, regs[k])
        resolved.append(r)
        code[k] += assemble(r)
        regs[k] = next_regs(regs[k], r)
    return [bytes(c) + epilogue() for c in code], resolved

