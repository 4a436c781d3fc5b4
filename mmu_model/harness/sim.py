"""Running scenarios: one guest action (or ioctl) plus the next VM entry per step.

:class:`Simulation` owns a VM built for an era, mode and vendor, brings every
vCPU to its start registers with a root loaded, and turns each event into a
step outcome (:mod:`mmu_model.outcome`).  This is the model's harness, not a
kernel thing, so its names are ordinary words.
"""
from __future__ import annotations

from ..arch import checker
from ..eras import DEFAULT_ERA, Era, get_era
from ..kernel import nested, vendor, x86
from ..kernel.kvm import Kvm, StepLog
from ..kernel.mmu import is_noncanonical_address
from ..kernel.registers import PRESETS, X86_CR0_PG, X86_CR3_PCID_NOFLUSH, X86_CR4_PCIDE, X86_FEATURE
from ..kernel.trace import Trace
from .outcome import Outcomes, add_to_totals, empty_totals
from .scenario import (
    MAX_VCPUS,
    MODES,
    NESTED_OPS,
    VENDORS,
    Scenario,
    ScenarioError,
    check_choice,
    parse_event,
    parse_start,
    show,
)


class Simulation:
    """A VM under one era/mode/vendor, stepped one event at a time."""

    def __init__(self, era: Era | str = DEFAULT_ERA, mode: str = "shadow", vendor: str = "vmx",
                 vcpus: int = 1, start: dict | str | None = None, trace: bool = True,
                 record: bool = True, check: bool = True, keep: bool = True):
        era, start = _check_arguments(era, mode, vendor, vcpus, start)
        self.era = era
        self.mode = mode
        self.vendor = vendor
        self.trace = Trace() if trace else None
        self.kvm = Kvm(self.era, mode, vendor, self.trace)
        self.record = record                # False: keep only totals and violations
        self.keep = record and keep         # False: outcomes are returned, not kept
        self.outcomes: list[dict] = []
        self.steps_run = 0
        self._totals = empty_totals()
        for _ in range(vcpus):
            self._bring_up(self.kvm.add_vcpu(), start)
        self.kvm.step = StepLog()
        if self.trace is not None:
            self.trace.clear()
        self.check = check                  # run the architectural checker
        # False: the checker keeps the guest's side (memory, TLBs) going but
        # does not look for violations (the parallel search replays programs
        # it only needs the events of).
        self.judge = True
        if check:
            checker.attach(self.kvm)
        self._outcomes = Outcomes(self.kvm)
        # Without the checker, a guest action that does not exit needs no
        # StepLog, no checker pass and no trace (TDP: most of them).
        self._quiet = self.kvm.tdp_enabled and not check

    def _bring_up(self, vcpu, start):
        """Userspace sets the start registers, then the vCPU's first VM entry
        loads a root.  Not a step: it leaves no outcome.

        Under nested-tdp the start registers are L2's: L1 (in long mode, its
        tables at nested.L1_CR3) comes up first, then enters L2 with the
        default EPTP and VPID."""
        err = x86.kvm_is_valid_sregs(vcpu, start)
        if err:
            raise ScenarioError("start", f"not a valid starting state: {err}")
        regs = start
        if self.kvm.nested:
            regs = {**PRESETS["long-mode"].registers(), "cr3": nested.L1_CR3}
            vcpu.vmcs12 = nested.new_vmcs12(start, regs, self.vendor)
            vcpu.vmxon = self.vendor == "vmx"
        vcpu.cr0, vcpu.cr3, vcpu.cr4, vcpu.efer = (regs["cr0"], regs["cr3"], regs["cr4"],
                                                  regs["efer"])
        if x86.is_pae_paging(vcpu):
            vcpu.ops.load_pdptrs(vcpu, vcpu.cr3)
        vcpu.ops.kvm_init_mmu(vcpu)
        vcpu.requests.clear()
        vcpu.ops.vcpu_enter_guest(vcpu)
        if self.kvm.nested:
            vcpu.ops.nested_vmx_enter_non_root_mode(vcpu, True)
            vcpu.ops.vcpu_enter_guest(vcpu)

    # ------------------------------------------------------------------
    def step(self, ev: dict) -> dict:
        """Apply one normalised event (see scenario.parse_event); return its outcome."""
        kvm = self.kvm
        op = ev["op"]
        index = ev.get("vcpu", 0)
        if type(index) is not int or not 0 <= index < len(kvm.vcpus):   # not -1: the last
            raise ScenarioError("vcpu", f"vCPU {show(index, True)} does not exist (the simulation "
                                        f"has {len(kvm.vcpus)})")
        vcpu = kvm.vcpus[index]
        index = self.steps_run
        if self._quiet and op in QUIET_OPS:
            reason = QUIET_OPS[op](vcpu, ev)
            if reason is not False:
                # The CPU ran it: no VM exit, nothing but a register changed
                # (the same outcome the full path below gives such a step).
                self.steps_run = index + 1
                if not self.record:
                    return {"violations": []}
                out = self._outcomes.quiet(index, vcpu, op, reason)
                out["violations"] = []
                if self.keep:
                    self.outcomes.append(out)
                return out
        kvm.step = log = StepLog(index)
        check = self.check
        if check:
            before = {"cr0": vcpu.cr0, "cr3": vcpu.cr3, "cr4": vcpu.cr4, "efer": vcpu.efer,
                      "smm": vcpu.smm, "guest_mode": vcpu.guest_mode}
            if self.judge:
                checker.observe_all(kvm)
        mmu = vcpu.mmu
        log.start_root = mmu.root.hpa
        log.start_prev = [r.hpa for r in mmu.prev_roots]
        trace = self.trace
        if trace is not None:
            trace.clear()
        fault, reason, intercepted = HANDLERS[op](vcpu, ev)
        if intercepted:
            vcpu.ops.vcpu_enter_guest(vcpu)
        found = []
        if check:
            if fault is None and (intercepted or op not in NESTED_OPS):
                native = not intercepted and kvm.tdp_enabled and op in NATIVE_OPS
                checker.arch_effects(vcpu, ev, before, index, native)
            if self.judge:
                found = checker.check_all(kvm)
        add_to_totals(self._totals, log, intercepted)
        self.steps_run = index + 1
        if not self.record:
            return {"violations": found}
        if trace is not None:
            names, depths = trace.names[:], trace.depths[:]
        else:
            names, depths = [], []
        out = self._outcomes.step(index, vcpu, op, fault, reason, intercepted, names, depths, log)
        out["violations"] = found
        if log.translation is not None:
            out["translation"] = log.translation
        if self.keep:
            self.outcomes.append(out)
        return out

    def apply(self, event: dict) -> dict:
        """Validate an event written as in a scenario file (bit names, hex
        strings), then step it.  ScenarioError names what is wrong."""
        return self.step(parse_event(event, "event", len(self.kvm.vcpus)))

    def run(self, events) -> list[dict]:
        return [self.step(e) for e in events]

    def totals(self) -> dict:
        return dict(self._totals)


def era_argument(era, where: str = "era") -> Era:
    """The Era that ``era`` (a name or an Era) names, or ScenarioError."""
    if isinstance(era, str):
        try:
            return get_era(era)
        except KeyError as err:
            raise ScenarioError(where, err.args[0]) from None
    if not isinstance(era, Era):
        raise ScenarioError(where, f"expected an era name or an Era, got {show(era, True)}")
    return era


def _check_arguments(era, mode, vendor, vcpus, start):
    """(the Era, the start registers) for Simulation's arguments, or
    ScenarioError naming the argument: as strict as a scenario file."""
    era = era_argument(era)
    check_choice(mode, MODES, "mode", python=True)
    check_choice(vendor, VENDORS, "vendor", python=True)
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= MAX_VCPUS:
        raise ScenarioError("vcpus", f"expected an integer from 1 to {MAX_VCPUS}, "
                                     f"got {show(vcpus, True)}")
    return era, parse_start("reset" if start is None else start)[0]


def _reg_value(current: int, ev: dict) -> int:
    if "value" in ev:
        return ev["value"]
    return (current | ev.get("set", 0)) & ~ev.get("clear", 0)


def _fault(err, kind="GP"):
    if not err:
        return None, None
    if isinstance(err, tuple):
        return err
    return kind, err


def on_mov_cr0(vcpu, ev):
    new = _reg_value(vcpu.cr0, ev)
    intercepted, why = vendor.exits(vcpu, "mov_cr0", new)
    if not intercepted:
        vcpu.cr0 = new
        return None, why, False
    return (*_fault(vcpu.ops.kvm_set_cr0(vcpu, new)), True)


def on_mov_cr4(vcpu, ev):
    new = _reg_value(vcpu.cr4, ev)
    intercepted, why = vendor.exits(vcpu, "mov_cr4", new)
    if not intercepted:
        vcpu.cr4 = new
        return None, why, False
    return (*_fault(vcpu.ops.kvm_set_cr4(vcpu, new)), True)


def on_mov_cr3(vcpu, ev):
    value = ev["value"]
    intercepted, why = vendor.exits(vcpu, "mov_cr3")
    if not intercepted:
        if vcpu.cr4 & X86_CR4_PCIDE:
            value &= ~X86_CR3_PCID_NOFLUSH
        if not x86.kvm_vcpu_is_legal_cr3(vcpu, value):
            return "GP", f"CR3 value {value:#x} sets bits above MAXPHYADDR", False
        vcpu.cr3 = value
        return None, why, False
    return (*_fault(vcpu.ops.kvm_set_cr3(vcpu, value)), True)


def on_wrmsr_efer(vcpu, ev):
    host = ev.get("host", False)
    err = vcpu.ops.set_efer(vcpu, _reg_value(vcpu.efer, ev), host)
    return (*_fault(err, "EINVAL" if host else "GP"), True)


def _invpcid_checks(vcpu, ev):
    if not vcpu.features & X86_FEATURE.INVPCID:
        return ("UD", "the guest's CPUID lacks INVPCID")
    return None


def on_invpcid(vcpu, ev):
    ud = _invpcid_checks(vcpu, ev)
    intercepted, why = vendor.exits(vcpu, "invpcid")
    if ud:
        return (*ud, intercepted)
    if not intercepted:
        err = x86.invpcid_hw_check(vcpu, ev["type"], ev["pcid"], ev["addr"])
        return (*_fault(err), False) if err else (None, why, False)
    return (*_fault(vcpu.ops.kvm_handle_invpcid(vcpu, ev["type"], ev["pcid"], ev["addr"])), True)


def on_invlpg(vcpu, ev):
    intercepted, why = vendor.exits(vcpu, "invlpg")
    if not intercepted:
        return None, why, False
    vcpu.ops.kvm_mmu_invlpg(vcpu, ev["addr"])
    note = "non-canonical address: INVLPG is a no-op" if is_noncanonical_address(vcpu, ev["addr"]) else None
    return None, note, True


def on_smi(vcpu, ev):
    vcpu.ops.kvm_inject_smi(vcpu)
    note = "SMI latched: the vCPU is already in SMM" if vcpu.smm else None
    return None, note, True


def on_rsm(vcpu, ev):
    return (*_fault(vcpu.ops.em_rsm(vcpu)), True)


def on_set_sregs(vcpu, ev):
    sregs = {k: ev.get(k, getattr(vcpu, k)) for k in ("cr0", "cr3", "cr4", "efer")}
    return (*_fault(vcpu.ops.__set_sregs(vcpu, sregs), "EINVAL"), True)


def on_init(vcpu, ev):
    vcpu.ops.__apic_accept_irq(vcpu)
    note = None
    if vcpu.smm:
        note = "INIT latched: it is blocked while the vCPU is in SMM"
    elif vendor.apic_init_signal_blocked(vcpu):
        note = ("INIT latched: it is blocked in VMX root operation; "
                "it becomes an INIT-signal VM exit once L2 runs")
    return None, note, True


def _l1_instruction(vcpu, what):
    """None if L1 may run this VMX/SVM instruction now, else (fault, reason).

    In SMM they are #UD: SMM leaves VMX operation (vmx_enter_smm() clears
    nested.vmxon, and nested_vmx_check_permission() then queues #UD), and
    nested_svm_vmrun() refuses VMRUN in SMM outright.
    """
    if not vcpu.kvm.nested:
        return "UD", f"{what}: this guest has no VMX (the mode is not nested-tdp)"
    if vcpu.kvm.vendor == "svm" and what in ("INVEPT", "INVVPID"):
        return "UD", f"{what} is a VMX instruction; SVM has none"
    if vcpu.guest_mode:
        return None, f"L2 is running: {what} is L1's instruction (send vmexit first)"
    if vcpu.smm:
        return "UD", f"{what} in SMM: " + ("SMM leaves VMX operation" if vcpu.kvm.vendor == "vmx"
                                          else "VMRUN is #UD in SMM")
    return None


def on_vmentry(vcpu, ev):
    name = "VMLAUNCH" if vcpu.kvm.vendor == "vmx" else "VMRUN"
    blocked = _l1_instruction(vcpu, name)
    if blocked:
        return (*blocked, False)
    v = vcpu.vmcs12
    eptp = ev.get("eptp", v.ept_pointer)
    if vcpu.kvm.vendor == "vmx":
        err = nested.nested_vmx_check_eptp(vcpu, eptp)
    else:
        # svm/nested.c: nested_vmcb_check_controls(): only a legal GPA
        err = (0 if x86.kvm_vcpu_is_legal_cr3(vcpu, eptp)
               else f"nCR3 {eptp:#x} is beyond the guest's physical address width")
    if not err and not vcpu.cr0 & X86_CR0_PG:
        err = ("L1 runs with paging off; nested paging under it needs L1's CR0.PG=1 "
               "(KVM WARNs), which the model does not cover")
    if err:
        if vcpu.kvm.vendor == "svm":
            return "VMfail", f"VMRUN fails its checks (L1 gets #VMEXIT(VMEXIT_INVALID)): {err}", True
        return "VMfail", f"the VM-entry fails its checks: {err}", True
    v.ept_pointer = eptp
    if vcpu.kvm.vendor == "vmx":        # SVM has no VPID; KVM gives L1 and L2 one ASID
        v.virtual_processor_id = ev.get("vpid", v.virtual_processor_id)
    vcpu.ops.nested_vmx_enter_non_root_mode(vcpu, True)
    if vcpu.init_latched:
        return None, ("the INIT that VMX root operation held is now L1's: L2 exits to L1 "
                      "at once (INIT-signal VM exit)"), True
    return None, None, True


def on_vmexit(vcpu, ev):
    if not vcpu.kvm.nested:
        return "UD", "vmexit: there is no L2 (the mode is not nested-tdp)", False
    if not vcpu.guest_mode:
        return None, "L1 is running: there is no L2 to exit from", False
    vcpu.ops.nested_vmx_vmexit(vcpu)
    return None, "L2 exits to L1 (an exit L1 intercepts)", True


def on_invept(vcpu, ev):
    blocked = _l1_instruction(vcpu, "INVEPT")
    if blocked:
        return (*blocked, False)
    return (*_fault(vcpu.ops.handle_invept(vcpu, ev["type"], ev["eptp"])), True)


def on_invvpid(vcpu, ev):
    blocked = _l1_instruction(vcpu, "INVVPID")
    if blocked:
        return (*blocked, False)
    return (*_fault(vcpu.ops.handle_invvpid(vcpu, ev["type"], ev["vpid"], ev["addr"])), True)


def on_write_ept(vcpu, ev):
    if not vcpu.kvm.nested:
        return "UD", "write_ept: there is no L1 hypervisor (the mode is not nested-tdp)", False
    if vcpu.kvm.guest is None:
        return None, "the checker is off: guest memory is not modelled", False
    return checker.on_write_ept(vcpu, ev)


def quiet_mov_cr0(vcpu, ev):
    """on_mov_cr0() for a write that does not exit: the note why, or False."""
    new = _reg_value(vcpu.cr0, ev)
    intercepted, why = vendor.exits(vcpu, "mov_cr0", new)
    if intercepted:
        return False
    vcpu.cr0 = new
    return why


def quiet_mov_cr4(vcpu, ev):
    new = _reg_value(vcpu.cr4, ev)
    intercepted, why = vendor.exits(vcpu, "mov_cr4", new)
    if intercepted:
        return False
    vcpu.cr4 = new
    return why


def quiet_mov_cr3(vcpu, ev):
    """A MOV CR3 the CPU runs itself (TDP), unless it faults (the full path words it)."""
    value = ev["value"]
    if vcpu.cr4 & X86_CR4_PCIDE:
        value &= ~X86_CR3_PCID_NOFLUSH
    if not x86.kvm_vcpu_is_legal_cr3(vcpu, value):
        return False
    intercepted, why = vendor.exits(vcpu, "mov_cr3")
    if intercepted:
        return False
    vcpu.cr3 = value
    return why


def quiet_flush(vcpu, ev):
    """INVLPG, and an INVPCID that passes the CPU's own checks, without an exit."""
    op = ev["op"]
    if op == "invpcid" and (_invpcid_checks(vcpu, ev)
                            or x86.invpcid_hw_check(vcpu, ev["type"], ev["pcid"], ev["addr"])):
        return False
    intercepted, why = vendor.exits(vcpu, op)
    return False if intercepted else why


# The steps that may take the quiet path (without the checker: nothing to
# invalidate on the guest's side), each checking that it does not exit.
QUIET_OPS = {"mov_cr0": quiet_mov_cr0, "mov_cr4": quiet_mov_cr4, "mov_cr3": quiet_mov_cr3,
             "invlpg": quiet_flush, "invpcid": quiet_flush}

# Guest instructions the CPU executes itself when they do not exit.
NATIVE_OPS = {"mov_cr0", "mov_cr4", "mov_cr3", "invlpg", "invpcid"}

HANDLERS = {
    "access": checker.on_access, "write_pte": checker.on_write_pte,
    "mov_cr0": on_mov_cr0, "mov_cr4": on_mov_cr4, "mov_cr3": on_mov_cr3,
    "wrmsr_efer": on_wrmsr_efer, "invpcid": on_invpcid, "invlpg": on_invlpg,
    "smi": on_smi, "rsm": on_rsm, "set_sregs": on_set_sregs, "init": on_init,
    "vmentry": on_vmentry, "vmexit": on_vmexit, "invept": on_invept, "invvpid": on_invvpid,
    "write_ept": on_write_ept,
}


def run_scenario(scenario: Scenario, era: Era | str | None = None, mode: str | None = None,
                 vendor_name: str | None = None, trace: bool = True,
                 invariants: bool = False) -> dict:
    """Run a parsed scenario; flags override its mode/vendor. Returns the outcome document.
    ``invariants``: each step also lists the model's invariant breaks after it
    (harness/invariants.py), as ``invariants`` (``run`` turns it on)."""
    head, steps, tail = stream_scenario(scenario, scenario.events, era, mode, vendor_name, trace,
                                        keep=True, invariants=invariants)
    return {**head, "steps": list(steps), **tail()}


def stream_scenario(scenario: Scenario, events, era: Era | str | None = None,
                    mode: str | None = None, vendor_name: str | None = None, trace: bool = True,
                    keep: bool = False, invariants: bool = False):
    """The outcome document in three parts, for writing it as it is computed:
    ``(head, steps, tail)`` - the fields before ``steps``, an iterator of the
    step outcomes (each computed when it is asked for), and a function that
    returns the fields after them once the steps have run."""
    era_obj = get_era(era or scenario.era or DEFAULT_ERA) if not isinstance(era, Era) else era
    sim = Simulation(era_obj, mode or scenario.mode, vendor_name or scenario.vendor,
                     scenario.vcpus, scenario.start, trace, keep=keep)
    head = {"contract": 1, "scenario": scenario.name, "era": era_obj.name, "mode": sim.mode,
            "vendor": sim.vendor, "vcpus": scenario.vcpus}
    notes = [era_obj.inferred, era_obj.nested_inferred if sim.mode == "nested-tdp" else None]

    def tail() -> dict:
        out = {"totals": sim.totals()}
        if any(notes):
            out["inferred"] = "; ".join(n for n in notes if n)
        return out
    step = sim.step
    if invariants:
        from .invariants import check_invariants

        def step(ev):
            return {**sim.step(ev), "invariants": check_invariants(sim.kvm)}
    return head, map(step, events), tail
