"""Run a scenario as a tiny guest on /dev/kvm, predict it with the model, compare.

One step is one scenario event: the guest's instruction (or the host's
ioctl) and the VM entries until the step's end marker (see
:mod:`mmu_model.probe.program`).  Per step the probe reads the VM's and the
vCPU's binary stats and the vCPU's control registers, and compares what the
detected backend makes observable:

``fault``      the guest died at this step (a triple fault: no IDT) or the
               ioctl was refused (EINVAL), vs the model's ``fault``;
``new_roots``  VM ``mmu_cache_miss`` (kvm_mmu_find_shadow_page() found no
               page), vs the model's ``counts.allocated``; only where every
               shadow-page lookup is a root's, i.e. shadow paging with the
               guest emulated (no shadow page faults); with ``--trace``
               the created root-level kvm_mmu_get_page events instead;
``tlb_flush``  vCPU ``tlb_flush`` (kvm_vcpu_flush_tlb_all/_guest/_current,
               the request-driven flushes), vs those calls in the model's step;
``zapped``     VM ``mmu_shadow_zapped``, vs the model's ``destroyed``
               (shadow paging only);
``cr0 cr3 cr4 efer``  KVM_GET_SREGS after the step, vs the model's registers;
``root_source``  with ``--trace`` (root): the root-level kvm_mmu_get_page
               events of the step, created ("new") or found ("hash"), or none
               ("neither": a prev_roots hit or the same root), vs the model's
               root_source; through stats alone a hash hit and a cache hit
               look the same (mmu_cache_miss +0).

Anything else (exits, prev_roots, frees) is "not observable here".
"""
from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import dataclass, field

from ..eras import all_eras, get_era
from ..harness.scenario import ScenarioError, parse_scenario
from ..harness.sim import run_scenario
from . import guest, program
from . import kvm_api as api
from .stats import StatsReader

CONTRACT = 1
FLUSH_CALLS = ("kvm_vcpu_flush_tlb_current", "kvm_vcpu_flush_tlb_guest", "kvm_vcpu_flush_tlb_all")
REGISTERS = ("cr0", "cr3", "cr4", "efer")
FIELDS = ("fault", "new_roots", "tlb_flush", "zapped", *REGISTERS, "root_source")
NOT_OBSERVABLE_ALWAYS = {
    "intercepted": "no stat counts one guest action's exits apart from the markers' own",
    "prev_roots": "no counter or tracepoint shows the cache's contents",
    "freed": "freeing a root reference leaves no counter (only a zap does)",
}

# CR4 bits by name (arch/x86/include/uapi/asm/processor-flags.h), for messages.
CR4_NAMES = {0: "VME", 1: "PVI", 2: "TSD", 3: "DE", 4: "PSE", 5: "PAE", 6: "MCE", 7: "PGE",
             8: "PCE", 9: "OSFXSR", 10: "OSXMMEXCPT", 11: "UMIP", 12: "LA57", 13: "VMXE",
             14: "SMXE", 16: "FSGSBASE", 17: "PCIDE", 18: "OSXSAVE", 20: "SMEP", 21: "SMAP",
             22: "PKE"}
CR0_PG, CR4_PAE, EFER_LME, EFER_LMA = 1 << 31, 1 << 5, 1 << 8, 1 << 10
EFER_NX = 1 << 11


class CannotRun(Exception):
    """A scenario (or machine) the probe cannot run: one line, exit 2."""

    @property
    def kind(self) -> str:
        """A short label for tables: which of the probe's limits this is."""
        msg = str(self)
        for needle, label in REFUSAL_KINDS:
            if needle in msg:
                return label
        return "other"


REFUSAL_KINDS = (("refuses", "KVM refuses a CR4/EFER bit"), ("start:", "not a long-mode start"),
                 ("nested", "nested ops"), ("SMM", "SMM"), ("INVPCID", "INVPCID"),
                 ("INIT", "INIT"), ("access, write_pte", "checker ops (access, write_pte)"),
                 ("leaves 64-bit mode", "leaves 64-bit mode"), ("CR3", "CR3 frame"),
                 ("vCPUs", "too many vCPUs"))


@dataclass
class Backend:
    vendor: str              # vmx, svm, pvm
    tdp: bool                # EPT/NPT in use
    tdp_mmu: bool
    emulated: bool | None    # every guest instruction emulated (measured at the prologue)
    smm: bool                # KVM_CAP_X86_SMM
    kernel: str
    params: dict = field(default_factory=dict)

    @property
    def mode(self) -> str:
        if not self.tdp:
            return "shadow"
        return "tdp" if self.tdp_mmu else "tdp-legacy"

    @property
    def model_vendor(self) -> str:
        # PVM is its own vendor module; under shadow paging the model's VMX and
        # SVM agree on every field the probe compares (tests/test_probe.py).
        return "svm" if self.vendor == "svm" else "vmx"

    def observable(self, traced: bool = False) -> dict:
        """field -> None (compared) or why it is not observable here."""
        out = {f: None for f in FIELDS}
        if not traced:
            out["root_source"] = ("a hash hit and a prev_roots hit both leave mmu_cache_miss "
                                  "unchanged; only the kvm_mmu_get_page tracepoint tells "
                                  "them apart (--trace, root)")
        if self.tdp and self.tdp_mmu:
            out["new_roots"] = "TDP MMU roots are not looked up in the shadow-page hash"
            out["zapped"] = "TDP MMU roots are not shadow pages"
            out["root_source"] = "TDP MMU roots (shared, preserved) have no tracepoint"
        elif self.tdp:
            why = ("with TDP the guest runs natively: mmu_cache_miss, mmu_shadow_zapped and "
                   "kvm_mmu_get_page also count the direct pages of EPT/NPT faults; the probe "
                   "does not compare them under TDP")
            out["new_roots"] = out["zapped"] = out["root_source"] = why
        elif not self.emulated and not traced:
            out["new_roots"] = ("mmu_cache_miss also counts the shadow pages of guest page "
                                "faults when the guest runs natively (--trace counts roots)")
        return out

    def to_json(self) -> dict:
        return {"vendor": self.vendor, "mode": self.mode, "tdp": self.tdp,
                "tdp_mmu": self.tdp_mmu, "emulated_guest": self.emulated, "smm": self.smm,
                "kernel": self.kernel, "params": self.params}


def _param(module: str, name: str) -> str | None:
    try:
        with open(f"/sys/module/{module}/parameters/{name}") as f:
            return f.read().strip()
    except OSError:
        return None


def detect_backend(kvm: api.Kvm) -> Backend:
    """Which vendor module is loaded, with or without TDP (sysfs parameters)."""
    if os.path.isdir("/sys/module/kvm_pvm"):
        vendor, tdp = "pvm", False        # PVM runs every guest on the shadow MMU
    elif os.path.isdir("/sys/module/kvm_intel"):
        vendor, tdp = "vmx", _param("kvm_intel", "ept") in ("Y", "1")
    elif os.path.isdir("/sys/module/kvm_amd"):
        vendor, tdp = "svm", _param("kvm_amd", "npt") in ("Y", "1")
    else:
        raise CannotRun("/dev/kvm: no kvm_intel, kvm_amd or kvm_pvm module in /sys/module")
    params = {}
    for name in ("tdp_mmu", "flush_on_reuse", "kick_only_root_holders"):
        v = _param("kvm", name)
        if v is not None:
            params[f"kvm.{name}"] = v
    if vendor == "pvm":
        v = _param("kvm_pvm", "pvm_emul_batch")
        if v is not None:
            params["kvm_pvm.pvm_emul_batch"] = v
    tdp_mmu = _param("kvm", "tdp_mmu") in ("Y", "1")
    return Backend(vendor, tdp, tdp and tdp_mmu, None,
                   bool(kvm.check_extension(api.KVM_CAP_X86_SMM)), platform.release(), params)


def era_for_kernel(release: str) -> str:
    """The merged era whose kernel range holds ``release`` (``uname -r``)."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise CannotRun(f"kernel {release!r}: cannot read its version; give --era")
    ver = (int(m[1]), int(m[2]))
    newest = None
    for era in all_eras():
        if not era.merged or era.parent:
            continue
        bounds = [tuple(map(int, b)) for b in re.findall(r"v(\d+)\.(\d+)", era.kernel)]
        if not bounds:
            continue
        lo, hi = bounds[0], bounds[-1]
        if lo <= ver <= hi:
            return era.name
        if newest is None or hi > newest[0]:
            newest = (hi, era.name)
    if newest and ver > newest[0]:
        return newest[1]
    raise CannotRun(f"kernel {release}: no era covers it; give --era")


# ---------------------------------------------------------------------------
# What the probe can run

def _has(entries, leaf, sub, reg, bit) -> bool:
    for e in entries:
        if e.function == leaf and e.index == sub:
            return bool(getattr(e, reg) >> bit & 1)
    return False


def refused_bits(kvm: api.Kvm, cpuid, start: dict, cr4_bits: int, efer_bits: int) -> list[str]:
    """The CR4/EFER bits this KVM refuses in 64-bit mode, asked of KVM itself:
    KVM_SET_SREGS on a scratch vCPU runs the same validity checks
    (kvm_is_valid_sregs() -> kvm_is_valid_cr4(), kvm_valid_efer()) as the
    guest's MOV CR4 / WRMSR.  The supported CPUID is not the whole story:
    this PVM kernel accepts CR4.SMEP, SMAP, FSGSBASE and PKE although its
    KVM_GET_SUPPORTED_CPUID lists none of them (docs/probe.md).
    Answers are kept in ``kvm.cache``."""
    key = ("refused", start["cr4"] & ~(1 << 17), start["efer"], cr4_bits, efer_bits)
    if key not in kvm.cache:
        kvm.cache[key] = _refused_bits(kvm, cpuid, start, cr4_bits, efer_bits)
    return kvm.cache[key]


def _refused_bits(kvm, cpuid, start, cr4_bits, efer_bits):
    vm = api.Vm(kvm, guest.MEM_SIZE)
    try:
        v = vm.create_vcpu()
        v.set_cpuid(cpuid)
        base = v.get_sregs()
        out = []
        tries = [("cr4", b, f"CR4.{CR4_NAMES.get(b, b)}") for b in range(64) if cr4_bits >> b & 1]
        tries += [("efer", b, "EFER.NX") for b in (11,) if efer_bits >> b & 1]
        for reg, bit, name in tries:        # one bit at a time, on a start without PCIDE
            regs = {**start, "cr4": start["cr4"] & ~(1 << 17)}
            regs[reg] |= 1 << bit
            try:
                v.set_sregs(guest.long_mode_sregs(api.kvm_sregs.from_buffer_copy(base), regs))
            except OSError:
                out.append(name)
        return out
    finally:
        vm.close()


def cannot_run(scenario, doc, backend: Backend, cpuid_entries, refused=None) -> str | None:
    """Why this scenario cannot be probed here (one line), or None.

    ``doc`` is the model's outcome, used to know which writes fault (those need
    no page tables) and that the guest stays in 64-bit mode."""
    if scenario.vcpus > guest.MAX_VCPUS:
        return f"{scenario.vcpus} vCPUs: the probe runs at most {guest.MAX_VCPUS}"
    if scenario.mode == "nested-tdp":
        return "nested-tdp: the probe's guest is not a hypervisor (nested ops are not driven)"
    s = scenario.start
    if not (s["cr0"] & CR0_PG and s["cr4"] & CR4_PAE and s["efer"] & EFER_LME):
        return ("start: the probe's guest is 64-bit code; it starts in long mode only "
                "(CR0.PG, CR4.PAE, EFER.LME)")
    cr4_bits, efer_bits = s["cr4"], s["efer"]
    for i, ev in enumerate(scenario.events):
        op = ev["op"]
        where = f"events[{i}] ({op})"
        if op in ("smi", "rsm"):
            return (f"{where}: SMM: KVM_CAP_X86_SMM is 0 here" if not backend.smm
                    else f"{where}: SMM is not driven by the probe")
        if op == "init":
            return f"{where}: INIT is an APIC signal the probe does not drive"
        if op == "invpcid":
            return (f"{where}: INVPCID: the CPU lacks it (not in KVM_GET_SUPPORTED_CPUID)"
                    if not _has(cpuid_entries, 7, 0, "ebx", 10)
                    else f"{where}: INVPCID is not driven by the probe")
        if op in ("access", "write_pte"):
            return (f"{where}: the probe's guest does not rebuild the checker's address spaces "
                    "(access, write_pte)")
        if op in ("vmentry", "vmexit", "invept", "invvpid", "write_ept"):
            return f"{where}: nested ops are not driven"
        if op == "mov_cr4" or op == "set_sregs":
            cr4_bits |= ev.get("value", 0) | ev.get("set", 0) | ev.get("cr4", 0)
        if op == "wrmsr_efer" or op == "set_sregs":
            efer_bits |= ev.get("value", 0) | ev.get("set", 0) | ev.get("efer", 0)
        out = doc["steps"][i]
        if out["fault"] is None:
            if op == "mov_cr3" or (op == "set_sregs" and "cr3" in ev):
                why = guest.unplaceable_cr3(ev["value"] if op == "mov_cr3" else ev["cr3"])
                if why:
                    return f"{where}: {why}"
            r = {k: int(v, 16) for k, v in out["registers"].items() if k in REGISTERS}
            if not (r["cr0"] & CR0_PG and r["efer"] & EFER_LMA):
                return (f"{where}: leaves 64-bit mode; the model takes CS.L as 0 there and the "
                        "probe's code is 64-bit")
    if guest.unplaceable_cr3(s["cr3"]):
        return f"start: {guest.unplaceable_cr3(s['cr3'])}"
    no = refused(cr4_bits, efer_bits) if refused else []
    if no:
        return (f"{', '.join(no)}: this KVM refuses {'it' if len(no) == 1 else 'them'} "
                "(KVM_SET_SREGS: EINVAL; the CPU or KVM lacks the feature)")
    return None


# ---------------------------------------------------------------------------
# Prediction and observation

def predicted(step: dict) -> dict:
    """The model's step, in the probe's fields."""
    regs = step["registers"]
    src = step["root_source"]
    return {"fault": _fault_kind(step["fault"]),
            "new_roots": step["counts"]["allocated"],
            "tlb_flush": sum(c in FLUSH_CALLS for c in step["calls"]),
            "zapped": len(step["destroyed"]),
            **{k: regs[k] for k in REGISTERS},
            "root_source": "new" if src == "new" else "hash" if src == "hash" else "neither"}


def _fault_kind(fault) -> str | None:
    if fault is None:
        return None
    if fault == "EINVAL":
        return "EINVAL"
    return "exception"          # #GP, #UD...: the guest triple-faults (no IDT)


@dataclass
class Session:
    """The probe's VM and everything it opened; close() releases all of it."""
    kvm: api.Kvm
    vm: api.Vm | None = None
    vm_stats: StatsReader | None = None
    vcpu_stats: list = field(default_factory=list)

    def close(self):
        for s in self.vcpu_stats:
            s.close()
        self.vcpu_stats = []
        if self.vm_stats:
            self.vm_stats.close()
            self.vm_stats = None
        if self.vm:
            self.vm.close()
            self.vm = None


VM_STATS = ("mmu_cache_miss", "mmu_shadow_zapped")
VCPU_STATS = ("tlb_flush", "insn_emulation")


def _snapshot(sess: Session, k: int) -> dict:
    vm = sess.vm_stats.read(VM_STATS)
    vc = sess.vcpu_stats[k].read(VCPU_STATS)
    return {"mmu_cache_miss": vm["mmu_cache_miss"], "mmu_shadow_zapped": vm["mmu_shadow_zapped"],
            "tlb_flush": vc["tlb_flush"], "insn_emulation": vc["insn_emulation"]}


class GuestDied(Exception):
    def __init__(self, exit_name: str, detail: str = ""):
        super().__init__(exit_name)
        self.exit_name = exit_name
        self.detail = detail


def _run_to(vcpu: api.Vcpu, port: int, on_port=None) -> float:
    """KVM_RUN until an OUT to ``port``; other marker ports call on_port(port).
    Returns the seconds spent in KVM_RUN."""
    spent = 0.0
    while True:
        t = time.perf_counter()
        reason = vcpu.run()
        spent += time.perf_counter() - t
        if reason == api.KVM_EXIT_IO and vcpu.run_struct.exit.io.direction == api.KVM_EXIT_IO_OUT:
            got = vcpu.run_struct.exit.io.port
            if got == port:
                return spent
            if on_port:
                on_port(got)
            continue
        detail = ""
        if reason == api.KVM_EXIT_INTERNAL_ERROR:
            detail = f"suberror {vcpu.run_struct.exit.internal.suberror}"
        elif reason == api.KVM_EXIT_FAIL_ENTRY:
            detail = f"reason {vcpu.run_struct.exit.fail_entry.hardware_entry_failure_reason:#x}"
        elif reason == api.KVM_EXIT_IO:
            detail = f"port {vcpu.run_struct.exit.io.port:#x}"
        raise GuestDied(api.EXIT_NAMES.get(reason, str(reason)), detail)


def _host_event(vcpu: api.Vcpu, ev: dict) -> str | None:
    """Do a host-side event's ioctl; "EINVAL" if KVM refuses it."""
    try:
        if ev["op"] == "set_sregs":
            s = vcpu.get_sregs()
            for k in REGISTERS:
                if k in ev:
                    setattr(s, k, ev[k])
            vcpu.set_sregs(s)
        else:
            vcpu.set_msr(program.MSR_EFER, ev["value"])
    except OSError:
        return "EINVAL"
    return None


def _root_lookups(text: str, cr4: int) -> list[bool]:
    """created? for each root-level kvm_mmu_get_page in a step's trace."""
    from .trace import parse_get_page
    level = 5 if cr4 >> 12 & 1 else 4          # CR4.LA57
    return [created for _, lvl, created in parse_get_page(text) if lvl == level]


def observe(scenario, resolved, backend: Backend, kvm: api.Kvm, cpuid, tracer=None) -> dict:
    """Run the scenario's program on a fresh VM; per step what the kernel did."""
    programs, _ = program.build(resolved, scenario.start, scenario.vcpus)
    frames = {guest.cr3_frame(scenario.start["cr3"])}
    for ev in resolved:
        if ev["op"] == "mov_cr3" or (ev["op"] == "set_sregs" and "cr3" in ev):
            v = ev.get("value", ev.get("cr3"))
            if not guest.unplaceable_cr3(v):
                frames.add(guest.cr3_frame(v))
    sess = Session(kvm)
    steps, died, kvm_time = [], None, 0.0
    try:
        sess.vm = vm = api.Vm(kvm, guest.MEM_SIZE)
        guest.write_memory(vm.mem, frames, programs)
        sess.vm_stats = StatsReader(vm.stats_fd())
        for k in range(scenario.vcpus):
            v = vm.create_vcpu()
            v.set_cpuid(cpuid)
            v.set_sregs(guest.long_mode_sregs(v.get_sregs(), scenario.start))
            v.set_regs(guest.start_regs(k))
            sess.vcpu_stats.append(StatsReader(v.stats_fd()))
        emul = 0
        for k, v in enumerate(vm.vcpus):            # bring-up: each vCPU's first root
            before = _snapshot(sess, k)
            try:
                kvm_time += _run_to(v, program.PORT_END)
            except GuestDied as d:
                raise CannotRun(f"vCPU {k} died during bring-up: {d.exit_name} {d.detail}".strip())
            emul += _snapshot(sess, k)["insn_emulation"] - before["insn_emulation"]
        backend.emulated = emul > 0
        if tracer is not None:
            tracer.take()                           # bring-up's lookups are not a step
        for i, ev in enumerate(resolved):
            k = ev.get("vcpu", 0)
            v = vm.vcpus[k]
            before = _snapshot(sess, k)
            host = {"fault": None}

            def at_marker(port, ev=ev, v=v, host=host):
                if port == program.PORT_BEGIN and program.is_host_event(ev):
                    host["fault"] = _host_event(v, ev)
            try:
                kvm_time += _run_to(v, program.PORT_END, at_marker)
            except GuestDied as d:
                died = {"step": i, "vcpu": k, "exit": d.exit_name, "detail": d.detail}
                steps.append({"fault": "exception" if d.exit_name == "SHUTDOWN" else d.exit_name})
                break
            after = _snapshot(sess, k)
            sregs = v.get_sregs()
            seen = {"fault": host["fault"],
                    "new_roots": after["mmu_cache_miss"] - before["mmu_cache_miss"],
                    "tlb_flush": after["tlb_flush"] - before["tlb_flush"],
                    "zapped": after["mmu_shadow_zapped"] - before["mmu_shadow_zapped"],
                    **{r: hex(getattr(sregs, r)) for r in REGISTERS}}
            if tracer is not None:
                looked = _root_lookups(tracer.take(), sregs.cr4)
                seen["root_source"] = ("new" if any(looked) else "hash" if looked else "neither")
                if not backend.emulated:
                    seen["new_roots"] = sum(looked)
            steps.append(seen)
        if died is None:
            for k, v in enumerate(vm.vcpus):
                try:
                    _run_to(v, -1)
                except GuestDied as d:
                    if d.exit_name != "HLT":
                        died = {"step": len(resolved), "vcpu": k, "exit": d.exit_name,
                                "detail": d.detail}
    finally:
        sess.close()
    return {"steps": steps, "died": died, "kvm_seconds": kvm_time}


def compare_step(obs: dict | None, pred: dict, observable: dict) -> dict:
    """field -> "agree" / "disagree" / "not observable here: why" / "not run"."""
    out = {}
    for f in FIELDS:
        why = observable[f]
        if obs is None:
            out[f] = "not run"
        elif why:
            out[f] = f"not observable here: {why}"
        elif f not in obs:
            out[f] = "not observable here: the guest died in this step"
        else:
            out[f] = "agree" if obs[f] == pred[f] else "disagree"
    return out


def probe(scenario, era: str | None = None, kvm: api.Kvm | None = None,
          trace: bool = False, tracer=None) -> dict:
    """Probe one parsed scenario.  Raises CannotRun (exit 2),
    api.KvmUnavailable or trace.TraceUnavailable; returns the probe document
    (see docs/probe.md).  ``trace``: also read tracepoints in a private
    tracing instance (mmu_model/probe/trace.py), removed afterwards; or, to
    probe many scenarios, pass an open ``tracer`` (trace.TraceSession)."""
    trace = trace or tracer is not None
    own = kvm is None
    kvm = kvm or api.Kvm()
    try:
        backend = detect_backend(kvm)
        era_name = era or era_for_kernel(backend.kernel)
        try:
            get_era(era_name)
        except KeyError as err:
            raise CannotRun(f"--era: {err.args[0]}") from None
        t = time.perf_counter()
        try:
            doc = run_scenario(scenario, era_name, backend.mode, backend.model_vendor)
        except ScenarioError as err:
            raise CannotRun(str(err)) from None
        model_seconds = time.perf_counter() - t
        cpuid = kvm.cache.get("cpuid") or kvm.cache.setdefault("cpuid", kvm.supported_cpuid())
        why = cannot_run(scenario, doc, backend, api.cpuid_entries(cpuid),
                         lambda c, e: refused_bits(kvm, cpuid, scenario.start, c, e))
        if why:
            raise CannotRun(why)
        programs, resolved = program.build(scenario.events, scenario.start, scenario.vcpus)
        if max(map(len, programs)) > guest.CODE_SIZE:
            raise CannotRun(f"{len(scenario.events)} events: a vCPU's program would exceed "
                            f"the guest's {guest.CODE_SIZE // 1024} KiB code slot")
        if tracer is not None:
            seen = observe(scenario, resolved, backend, kvm, cpuid, tracer)
        elif trace:
            from .trace import TraceSession
            with TraceSession() as tracer:
                seen = observe(scenario, resolved, backend, kvm, cpuid, tracer)
        else:
            seen = observe(scenario, resolved, backend, kvm, cpuid)
    finally:
        if own:
            kvm.close()
    observable = backend.observable(trace)
    steps, agree_all = [], True
    for i, (ev, st) in enumerate(zip(resolved, doc["steps"])):
        obs = seen["steps"][i] if i < len(seen["steps"]) else None
        pred = predicted(st)
        fields = compare_step(obs, pred, observable)
        verdict = (None if obs is None else
                   "disagree" if "disagree" in fields.values() else "agree")
        if verdict == "disagree":
            agree_all = False
        steps.append({"index": i, "vcpu": ev.get("vcpu", 0), "op": ev["op"],
                      "guest": (["(host) " + program.HOST_OPS[ev["op"]]] if program.is_host_event(ev)
                                else program.listing(ev)[1:-2]),
                      "observed": obs, "predicted": pred, "fields": fields, "verdict": verdict})
    died = seen["died"]
    if died and died["exit"] not in ("SHUTDOWN",):
        agree_all = False           # INTERNAL_ERROR / FAIL_ENTRY are never a prediction
    n = len(seen["steps"])
    return {"contract": CONTRACT, "probe": scenario.name, "era": era_name,
            "mode": backend.mode, "vendor": backend.model_vendor, "backend": backend.to_json(),
            "observed_through": "stats+tracepoints" if trace else "stats",
            "not_observable": {**{f: w for f, w in observable.items() if w},
                               **NOT_OBSERVABLE_ALWAYS},
            "steps": steps, "died": died,
            "totals": {"steps": len(steps), "run": n,
                       "agree": sum(s["verdict"] == "agree" for s in steps),
                       "disagree": sum(s["verdict"] == "disagree" for s in steps),
                       "kvm_seconds": seen["kvm_seconds"], "model_seconds": model_seconds},
            "agree": agree_all}


# ---------------------------------------------------------------------------
# Seeded random guest programs: register writes and INVLPG

RANDOM_CR3 = (0x1000, 0x2000, 0x3000, 0x4000, 0x5000)
RANDOM_TOGGLES = (("mov_cr0", "WP"), ("mov_cr4", "PGE"), ("mov_cr4", "SMEP"),
                  ("mov_cr4", "SMAP"), ("wrmsr_efer", "NX"), ("wrmsr_efer", "SCE"))
RANDOM_INVLPG = (0x200000, 0x7f0000001000, 0x800000000000, 0xffffffff81000000)


def random_scenario(rng, index: int, length: int = 12, vcpus: int = 1, toggles=RANDOM_TOGGLES):
    """One seeded program from a random.Random: MOV CR3 among five address
    spaces, bit toggles of CR0/CR4/EFER (each a legal write from long mode),
    and INVLPG of mapped, unmapped and non-canonical addresses."""
    events = []
    on = {}
    for _ in range(length):
        r = rng.random()
        vcpu = rng.randrange(vcpus)
        if r < 0.4:
            events.append({"op": "mov_cr3", "value": hex(rng.choice(RANDOM_CR3)), "vcpu": vcpu})
        elif r < 0.85:
            op, bit = rng.choice(toggles)
            key = (vcpu, op, bit)
            start_on = bit in ("WP", "PGE", "NX", "SCE")
            state = on.get(key, start_on)
            events.append({"op": op, ("clear" if state else "set"): [bit], "vcpu": vcpu})
            on[key] = not state
        else:
            events.append({"op": "invlpg", "addr": hex(rng.choice(RANDOM_INVLPG)), "vcpu": vcpu})
    return parse_scenario({"name": f"random-{index}", "vcpus": vcpus, "start": "long-mode",
                           "events": events})


def random_scenarios(seed: int, n: int, length: int = 12):
    import random
    rng = random.Random(seed)
    return [random_scenario(rng, i, length, vcpus=1 + (i % 4 == 3)) for i in range(n)]
