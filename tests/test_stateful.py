"""Random event sequences on several vCPUs, with the model's invariants checked
after every step (Hypothesis RuleBasedStateMachine).

Invariants: each MMU has one current and three previous slots; every root's
reference count equals the references slots (and, from v6.4, the TDP MMU)
hold; no slot points at a destroyed root; each vCPU runs on a root of its
MMU's role (and CR3, for shadow roots); a faulting event changes nothing;
the same input gives byte-identical JSON.
"""
import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mmu_model import Simulation, all_eras
from mmu_model.harness.invariants import check_invariants, state_snapshot
from mmu_model.kernel.registers import PRESETS

CR0_BITS = ["PG", "WP", "PE", "CD", "NW", "TS"]
CR4_BITS = ["PAE", "PGE", "PCIDE", "SMEP", "SMAP", "PSE", "PKE", "LA57"]
CR3_VALUES = [0x1000, 0x2000, 0x3000, 0x2001, 0x3002, 0x1003, 0x4000, 1 << 47]
FAULTS = {"GP", "UD", "EINVAL", "VMfail"}
EPTPS = [0x5005E, 0x6005E, 0x50000, 0x5005F]       # last two: bad for VMX (memory type 0 is fine)


def _start(name):
    p = PRESETS[name]
    return {"cr0": p.cr0, "cr3": p.cr3, "cr4": p.cr4, "efer": p.efer}


class RootLifecycle(RuleBasedStateMachine):
    @initialize(era=st.sampled_from([e.name for e in all_eras()]),
                mode=st.sampled_from(["shadow", "tdp", "tdp-legacy", "nested-tdp"]),
                vendor=st.sampled_from(["vmx", "svm"]),
                vcpus=st.integers(1, 3),
                start=st.sampled_from(["reset", "32bit", "pae", "long-mode", "long-mode-pcid", "linux"]))
    def setup(self, era, mode, vendor, vcpus, start):
        self.args = (era, mode, vendor, vcpus, _start(start))
        self.sim = Simulation(*self.args)
        self.events = []
        self.vcpus = vcpus

    def _step(self, ev):
        ev.setdefault("vcpu", 0)
        ev["vcpu"] %= self.vcpus
        before = state_snapshot(self.sim.kvm)
        out = self.sim.step(ev)
        self.events.append(ev)
        if out["fault"] in FAULTS:
            assert state_snapshot(self.sim.kvm) == before, f"faulting {ev} changed state"

    @rule(bit=st.sampled_from(CR0_BITS), set_=st.booleans(), vcpu=st.integers(0, 2))
    def mov_cr0(self, bit, set_, vcpu):
        from mmu_model.kernel.registers import X86_CR0
        self._step({"op": "mov_cr0", ("set" if set_ else "clear"): int(X86_CR0[bit]), "vcpu": vcpu})

    @rule(bit=st.sampled_from(CR4_BITS), set_=st.booleans(), vcpu=st.integers(0, 2))
    def mov_cr4(self, bit, set_, vcpu):
        from mmu_model.kernel.registers import X86_CR4
        self._step({"op": "mov_cr4", ("set" if set_ else "clear"): int(X86_CR4[bit]), "vcpu": vcpu})

    @rule(cr3=st.sampled_from(CR3_VALUES), noflush=st.booleans(), vcpu=st.integers(0, 2))
    def mov_cr3(self, cr3, noflush, vcpu):
        self._step({"op": "mov_cr3", "value": cr3 | (noflush << 63), "vcpu": vcpu})

    @rule(bit=st.sampled_from(["NX", "LME"]), set_=st.booleans(), host=st.booleans(),
          vcpu=st.integers(0, 2))
    def wrmsr_efer(self, bit, set_, host, vcpu):
        from mmu_model.kernel.registers import EFER
        self._step({"op": "wrmsr_efer", ("set" if set_ else "clear"): int(EFER[bit]),
                    "host": host, "vcpu": vcpu})

    @rule(type_=st.integers(0, 4), pcid=st.sampled_from([0, 1, 2, 0x1000]), vcpu=st.integers(0, 2))
    def invpcid(self, type_, pcid, vcpu):
        self._step({"op": "invpcid", "type": type_, "pcid": pcid, "addr": 0x1000, "vcpu": vcpu})

    @rule(addr=st.sampled_from([0x1000, 1 << 47]), vcpu=st.integers(0, 2))
    def invlpg(self, addr, vcpu):
        self._step({"op": "invlpg", "addr": addr, "vcpu": vcpu})

    @rule(op=st.sampled_from(["smi", "rsm", "init"]), vcpu=st.integers(0, 2))
    def simple(self, op, vcpu):
        self._step({"op": op, "vcpu": vcpu})

    @rule(start=st.sampled_from(["reset", "pae", "long-mode", "long-mode-pcid"]),
          cr3=st.sampled_from(CR3_VALUES), vcpu=st.integers(0, 2))
    def set_sregs(self, start, cr3, vcpu):
        self._step({"op": "set_sregs", **_start(start), "cr3": cr3, "vcpu": vcpu})

    # L1 running L2 (nested-tdp; elsewhere these are #UD and must change nothing)
    @rule(eptp=st.sampled_from(EPTPS), vpid=st.integers(0, 3), vcpu=st.integers(0, 2))
    def vmentry(self, eptp, vpid, vcpu):
        self._step({"op": "vmentry", "eptp": eptp, "vpid": vpid, "vcpu": vcpu})

    @rule(vcpu=st.integers(0, 2))
    def vmexit(self, vcpu):
        self._step({"op": "vmexit", "vcpu": vcpu})

    @rule(type_=st.integers(0, 3), eptp=st.sampled_from(EPTPS), vcpu=st.integers(0, 2))
    def invept(self, type_, eptp, vcpu):
        self._step({"op": "invept", "type": type_, "eptp": eptp, "vcpu": vcpu})

    @rule(type_=st.integers(0, 4), vpid=st.integers(0, 2), vcpu=st.integers(0, 2))
    def invvpid(self, type_, vpid, vcpu):
        self._step({"op": "invvpid", "type": type_, "vpid": vpid, "addr": 0x400000, "vcpu": vcpu})

    @rule(eptp=st.sampled_from(EPTPS), frame=st.sampled_from([0x777, 0x778]), present=st.booleans(),
          vcpu=st.integers(0, 2))
    def write_ept(self, eptp, frame, present, vcpu):
        self._step({"op": "write_ept", "eptp": eptp, "gpa": 0x1002000,
                    "value": frame << 12 | (7 if present else 0), "vcpu": vcpu})

    @rule(addr=st.sampled_from([0x400000, 0x401000]), vcpu=st.integers(0, 2))
    def access(self, addr, vcpu):
        self._step({"op": "access", "addr": addr, "vcpu": vcpu})

    @invariant()
    def roots_are_consistent(self):
        if hasattr(self, "sim"):
            problems = check_invariants(self.sim.kvm)
            assert not problems, problems
            for v in self.sim.kvm.vcpus:
                assert len(v.root_mmu.prev_roots) == 3 and len(v.guest_mmu.prev_roots) == 3

    def teardown(self):
        if not getattr(self, "events", None):
            return
        again = Simulation(*self.args)
        for ev in self.events:
            again.step(dict(ev))
        first = json.dumps(self.sim.outcomes, sort_keys=True)
        assert json.dumps(again.outcomes, sort_keys=True) == first, "same input, different output"


RootLifecycle.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
TestRootLifecycle = RootLifecycle.TestCase
