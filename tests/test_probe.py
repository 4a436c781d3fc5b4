"""The probe (docs/probe.md): the event->instruction mapping, the uapi layouts
and the stats parser without /dev/kvm; then real runs on this machine's KVM,
which skip, saying why, where /dev/kvm is missing or unusable."""
import ctypes
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import pytest
from conftest import ROOT

from mmu_model import load_scenario, parse_scenario, run_scenario
from mmu_model.probe import kvm_api as api
from mmu_model.probe import probe as P
from mmu_model.probe import program
from mmu_model.probe.stats import StatsReader, parse_data, parse_descriptors, parse_header
from mmu_model.probe.trace import TraceSession, TraceUnavailable, parse_get_page, tracefs_mounts

LIBRARY = sorted(p.relative_to(ROOT / "scenarios").as_posix()
                 for p in (ROOT / "scenarios").rglob("*.json"))
LM = {"cr0": 0x80050033, "cr3": 0x1000, "cr4": 0x6a0, "efer": 0xd01}


def _kvm_fds():
    """This process's fds on /dev/kvm or KVM's anonymous inodes (VM, vCPU, stats)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target == "/dev/kvm" or target.startswith("anon_inode:kvm"):
            out.add((fd, target))
    return out


def _kvm_maps():
    with open("/proc/self/maps") as f:
        return sum("kvm-vcpu" in line for line in f)


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """After each test: no KVM fd, kvm_run mapping or child process of the
    probe's, and the tracing settings untouched (the probe reads stats only)."""
    fds, maps = _kvm_fds(), _kvm_maps()
    tracing = _tracing_state()
    yield
    assert _kvm_fds() <= fds, "a VM, vCPU or stats fd was left open"
    assert _kvm_maps() <= maps, "a kvm_run mapping was left behind"
    assert _tracing_state() == tracing
    assert not _children()


def _tracing_state():
    """Every tracefs mount, and in each: tracing_on, the enabled events, the instances."""
    state = []
    for base in tracefs_mounts():
        item = [base]
        for rel in ("tracing_on", "set_event", "set_event_pid"):
            try:
                with open(f"{base}/{rel}") as f:
                    item.append(f.read())
            except OSError:
                item.append(None)
        item.append(sorted(os.listdir(f"{base}/instances")) if os.path.isdir(f"{base}/instances")
                    else None)
        state.append(item)
    return state


def _children():
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            return f.read().split()
    except OSError:
        return []


def kvm_or_skip():
    try:
        return api.Kvm()
    except api.KvmUnavailable as err:
        pytest.skip(f"no usable /dev/kvm here: {err}")


@pytest.fixture
def kvm():
    k = kvm_or_skip()
    yield k
    k.close()


# ---------------------------------------------------------------------------
# Without /dev/kvm: layouts, encodings, stats, decisions

def test_struct_sizes_match_the_uapi_headers():
    # sizes as the uapi headers define them (and as their ioctl numbers encode)
    assert ctypes.sizeof(api.kvm_regs) == 144
    assert ctypes.sizeof(api.kvm_segment) == 24
    assert ctypes.sizeof(api.kvm_sregs) == 312
    assert ctypes.sizeof(api.kvm_userspace_memory_region) == 32
    assert ctypes.sizeof(api.kvm_cpuid_entry2) == 40
    assert ctypes.sizeof(api.kvm_stats_header) == 24
    assert ctypes.sizeof(api.kvm_stats_desc) == 16
    assert api.kvm_run.exit.offset == 32 and api.kvm_run.exit_reason.offset == 8
    assert api.kvm_run_io.data_offset.offset == 8


C_PROGRAM = r"""
#include <stdio.h>
#include <linux/kvm.h>
int main(void) {
    printf("%lu %lu %lu %lu %lu %lu %lu %lu %lu %lu %lu %lu\n",
        (unsigned long)KVM_GET_API_VERSION, (unsigned long)KVM_CREATE_VM,
        (unsigned long)KVM_GET_SUPPORTED_CPUID, (unsigned long)KVM_CREATE_VCPU,
        (unsigned long)KVM_SET_USER_MEMORY_REGION, (unsigned long)KVM_RUN,
        (unsigned long)KVM_GET_REGS, (unsigned long)KVM_SET_REGS,
        (unsigned long)KVM_GET_SREGS, (unsigned long)KVM_SET_SREGS,
        (unsigned long)KVM_SET_CPUID2, (unsigned long)KVM_GET_STATS_FD);
    return 0;
}
"""


def test_ioctl_numbers_match_the_installed_headers(tmp_path):
    if not shutil.which("cc") or not os.path.exists("/usr/include/linux/kvm.h"):
        pytest.skip("no C compiler or no /usr/include/linux/kvm.h to compare with")
    (tmp_path / "n.c").write_text(C_PROGRAM)
    subprocess.run(["cc", "-o", str(tmp_path / "n"), str(tmp_path / "n.c")], check=True)
    got = subprocess.run([str(tmp_path / "n")], capture_output=True, text=True, check=True)
    ours = [api.KVM_GET_API_VERSION, api.KVM_CREATE_VM, api.KVM_GET_SUPPORTED_CPUID,
            api.KVM_CREATE_VCPU, api.KVM_SET_USER_MEMORY_REGION, api.KVM_RUN, api.KVM_GET_REGS,
            api.KVM_SET_REGS, api.KVM_GET_SREGS, api.KVM_SET_SREGS, api.KVM_SET_CPUID2,
            api.KVM_GET_STATS_FD]
    assert [int(x) for x in got.stdout.split()] == ours


@pytest.mark.parametrize("event, expected", [
    ({"op": "mov_cr3", "value": 0x2000}, "48b80020000000000000 0f22d8"),
    ({"op": "mov_cr0", "value": 0x80040033}, "48b83300048000000000 0f22c0"),
    ({"op": "mov_cr4", "value": 0x620}, "48b82006000000000000 0f22e0"),
    ({"op": "wrmsr_efer", "value": 0x501}, "b9800000c0 b801050000 ba00000000 0f30"),
    ({"op": "invlpg", "addr": 0x800000000000}, "48b80000000000800000 0f0138"),
])
def test_event_bytes(event, expected):
    body = program.assemble(program.resolve(event, LM))
    begin, end = "e6e0", "e6e1 e6e2"
    assert body.hex() == (begin + expected + end).replace(" ", "")


def test_host_events_have_no_guest_instructions():
    for ev in ({"op": "set_sregs", "cr3": 0x5000}, {"op": "wrmsr_efer", "value": 0xd01, "host": True}):
        assert program.assemble(program.resolve(ev, LM)) == bytes.fromhex("e6e0e6e1e6e2")


def test_set_and_clear_resolve_against_the_running_registers():
    events = [{"op": "mov_cr0", "clear": 1 << 16}, {"op": "mov_cr0", "set": 1 << 16},
              {"op": "wrmsr_efer", "clear": 1 << 11, "vcpu": 1}]
    progs, resolved = program.build(events, LM, 2)
    assert [r["value"] for r in resolved] == [0x80040033, 0x80050033, 0x501]
    assert progs[1].count(bytes.fromhex("0f30")) == 1 and b"\x0f\x30" not in progs[0]
    assert progs[0].endswith(b"\xf4") and progs[0].startswith(program.prologue())


def test_the_bytes_disassemble_to_the_listing(tmp_path):
    """Independent of our tables: objdump reads the program back."""
    if not shutil.which("objdump"):
        pytest.skip("no objdump to disassemble with")
    events = [{"op": "mov_cr3", "value": 0x2000}, {"op": "mov_cr4", "set": 1 << 7},
              {"op": "wrmsr_efer", "clear": 1 << 11}, {"op": "invlpg", "addr": 0x7f0000001000}]
    progs, resolved = program.build(events, LM, 1)
    (tmp_path / "g.bin").write_bytes(progs[0])
    out = subprocess.run(["objdump", "-D", "-b", "binary", "-mi386:x86-64", "-Mintel", "--no-show-raw-insn",
                          str(tmp_path / "g.bin")], capture_output=True, text=True, check=True)
    asm = [line.split("\t")[-1].strip() for line in out.stdout.splitlines() if "\t" in line]
    asm = [" ".join(a.split()) for a in asm]
    want = ["out 0xe1,al", "out 0xe2,al"]
    for r in resolved:
        for line in program.listing(r):
            line = line.replace("imm8, al", "").replace(", ", ",")
            want.append(line)
    want.append("hlt")
    norm = [a.replace("movabs", "mov").replace("QWORD PTR ", "").replace("BYTE PTR ", "")
            for a in asm]
    assert norm == want


def _stats_blob(names, values, name_size=48):
    """A stats fd's content as KVM lays it out (include/uapi/linux/kvm.h)."""
    id_ = b"kvm-1/vcpu-0".ljust(name_size, b"\0")
    desc_size = 16 + name_size
    desc_off = 24 + name_size
    data_off = desc_off + desc_size * len(names)
    descs = b"".join(struct.pack("<IhHII", 0, 0, 1, 8 * i, 0) + n.encode().ljust(name_size, b"\0")
                     for i, n in enumerate(names))
    header = struct.pack("<6I", 0, name_size, len(names), 24, desc_off, data_off)
    return header + id_ + descs + struct.pack(f"<{len(values)}Q", *values)


def test_stats_parsing():
    blob = _stats_blob(["tlb_flush", "exits", "mmu_cache_miss"], [3, 99, 1 << 40])
    head = parse_header(blob)
    assert (head.num_desc, head.name_size) == (3, 48)
    step = 16 + head.name_size
    descs = parse_descriptors(blob[head.desc_offset:head.desc_offset + 3 * step], 3, 48)
    assert [d.name for d in descs] == ["tlb_flush", "exits", "mmu_cache_miss"]
    assert parse_data(blob[head.data_offset:], descs) == {"tlb_flush": 3, "exits": 99,
                                                        "mmu_cache_miss": 1 << 40}
    with tempfile.TemporaryFile() as f:           # the reader only preads: a file will do
        f.write(blob)
        f.flush()
        r = StatsReader(os.dup(f.fileno()))
        try:
            assert r.id == "kvm-1/vcpu-0" and r.read()["exits"] == 99
        finally:
            r.close()


def test_get_page_lines():
    text = ("# tracer: nop\n"
            "  python-3229 [001] ...1.  1452.33: kvm_mmu_get_page: sp gen 0 gfn 1 l4 8-byte q0 "
            "wux nxe ad root 0 sync new\n"
            "  python-3229 [001] ...1.  1452.34: kvm_mmu_get_page: sp gen 0 gfn 2a l1 8-byte q0 "
            "direct wux nxe ad root 0 sync existing\n"
            "  python-3229 [001] ...1.  1452.35: kvm_mmu_prepare_zap_page: sp gen 0 gfn 3 l4\n")
    assert parse_get_page(text) == [(1, 4, True), (0x2a, 1, False)]
    assert P._root_lookups(text, cr4=0x6a0) == [True]


def test_truncated_stats_are_an_error():
    with pytest.raises(ValueError):
        parse_header(b"\0" * 10)
    with pytest.raises(ValueError):
        parse_descriptors(b"\0" * 20, 2, 48)


@pytest.mark.parametrize("release, era", [("6.18.44-fc-v1272", "v6.18"), ("6.6.1", "v6.18"),
                                          ("6.5.0", "v6.4"), ("5.16.2", "v5.17"),
                                          ("6.3.13", "v5.19"), ("5.15.0-91-generic", "v5.15"),
                                          ("7.2.0", "v6.18")])
def test_era_from_uname(release, era):
    assert P.era_for_kernel(release) == era


def test_an_old_kernel_has_no_era():
    with pytest.raises(P.CannotRun, match="no era covers it"):
        P.era_for_kernel("4.19.0")


def _backend(**kw):
    b = dict(vendor="pvm", tdp=False, tdp_mmu=False, emulated=True, smm=False, kernel="6.18.0")
    b.update(kw)
    return P.Backend(**b)


@pytest.mark.parametrize("name, reason", [
    ("smi-rsm", "SMM: KVM_CAP_X86_SMM is 0 here"),
    ("init", "INIT is an APIC signal"),
    ("boot-to-long-mode", "starts in long mode only"),
    ("nested/nested-invept", "nested-tdp"),
    ("one-space-two-pcids", "access, write_pte"),
])
def test_what_the_probe_refuses(name, reason):
    sc = load_scenario(ROOT / "scenarios" / f"{name}.json")
    doc = run_scenario(sc, "v6.18", "shadow")
    assert reason in P.cannot_run(sc, doc, _backend(), [], lambda c, e: [])


def test_refused_bits_and_leaving_long_mode_are_refused():
    sc = parse_scenario({"start": "long-mode", "events": [{"op": "mov_cr4", "set": ["PCIDE"]}]})
    doc = run_scenario(sc, "v6.18", "shadow")
    msg = P.cannot_run(sc, doc, _backend(), [], lambda c, e: ["CR4.PCIDE"] if c >> 17 & 1 else [])
    assert msg.startswith("CR4.PCIDE: this KVM refuses it")
    assert P.CannotRun(msg).kind == "KVM refuses a CR4/EFER bit"
    sc = parse_scenario({"start": "long-mode", "events": [{"op": "mov_cr0", "clear": ["PG"]}]})
    doc = run_scenario(sc, "v6.18", "shadow")
    assert "leaves 64-bit mode" in P.cannot_run(sc, doc, _backend(), [], lambda c, e: [])
    sc = parse_scenario({"start": "long-mode", "events": [{"op": "mov_cr3", "value": "0x200000"}]})
    doc = run_scenario(sc, "v6.18", "shadow")
    assert "page tables at frames" in P.cannot_run(sc, doc, _backend(), [], lambda c, e: [])


def test_what_each_backend_makes_observable():
    pvm = _backend().observable()
    assert pvm["new_roots"] is None and pvm["tlb_flush"] is None and pvm["root_source"]
    native = _backend(vendor="vmx", emulated=False).observable()
    assert "page faults" in native["new_roots"] and native["tlb_flush"] is None
    tdp = _backend(vendor="vmx", tdp=True, tdp_mmu=True, emulated=False).observable()
    assert tdp["new_roots"] and tdp["zapped"] and tdp["cr3"] is None
    legacy = _backend(vendor="vmx", tdp=True, tdp_mmu=False, emulated=False)
    assert legacy.mode == "tdp-legacy" and "EPT/NPT faults" in legacy.observable(True)["new_roots"]
    assert _backend(vendor="svm", emulated=False).observable(True)["new_roots"] is None


def test_not_observable_is_never_agreement():
    pred = {f: 0 for f in P.FIELDS}
    fields = P.compare_step({f: 1 for f in P.FIELDS}, pred, _backend().observable())
    assert fields["root_source"].startswith("not observable here")
    assert fields["tlb_flush"] == "disagree"
    assert P.compare_step(None, pred, _backend().observable())["fault"] == "not run"


def test_prediction_counts_request_driven_flushes_only():
    """cr3-no-pcid step 0: two hardware flushes in the model (the request's and
    kvm_mmu_load()'s), one of them through kvm_vcpu_flush_tlb_current(), which
    is the one that bumps the tlb_flush stat (arch/x86/kvm/x86.c)."""
    sc = load_scenario(ROOT / "scenarios" / "cr3-no-pcid.json")
    step = run_scenario(sc, "v6.18", "shadow")["steps"][0]
    assert step["tlb_flushes"] == ["current", "current"]
    assert P.predicted(step)["tlb_flush"] == 1 and P.predicted(step)["new_roots"] == 1


def test_the_model_vendor_does_not_matter_for_what_is_compared():
    """PVM is predicted with the model's VMX: under shadow paging VMX and SVM
    predict the same compared fields on the library and the random programs."""
    scs = [load_scenario(ROOT / "scenarios" / n) for n in LIBRARY if not n.startswith("nested")]
    scs += P.random_scenarios(3, 50)
    for sc in scs:
        a = run_scenario(sc, "v6.18", "shadow", "vmx")["steps"]
        b = run_scenario(sc, "v6.18", "shadow", "svm")["steps"]
        assert [P.predicted(s) for s in a] == [P.predicted(s) for s in b], sc.name


def test_no_dev_kvm_is_one_line_and_exit_2(monkeypatch, capsys):
    from mmu_model.cli import main
    monkeypatch.setattr(api, "DEV_KVM", "/nonexistent/kvm")
    assert main(["probe", str(ROOT / "scenarios" / "cr3-no-pcid.json")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "no such device" in err


def test_bad_scenario_is_one_line_and_exit_2(tmp_path, capsys):
    from mmu_model.cli import main
    bad = tmp_path / "bad.json"
    bad.write_text('{"events": [{"op": "mov_cr9"}]}')
    assert main(["probe", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "events[0].op" in err


# ---------------------------------------------------------------------------
# On this machine's KVM

def _verdicts(doc):
    return [s["verdict"] for s in doc["steps"]]


@pytest.mark.parametrize("name", LIBRARY)
def test_library_scenario_agrees_step_by_step(name, kvm):
    sc = load_scenario(ROOT / "scenarios" / name)
    try:
        doc = P.probe(sc, kvm=kvm)
    except P.CannotRun as err:
        pytest.skip(f"the probe cannot run {name} here: {err}")
    assert doc["died"] is None
    bad = [(s["index"], {f: (s["observed"].get(f), s["predicted"][f])
                         for f, v in s["fields"].items() if v == "disagree"})
           for s in doc["steps"] if s["verdict"] != "agree"]
    assert not bad, bad
    assert doc["totals"]["agree"] == len(sc.events)
    for s in doc["steps"]:             # what is compared is compared, the rest says so
        for f, v in s["fields"].items():
            assert v == "agree" or v.startswith("not observable here"), (f, v)


def test_two_hundred_random_programs_agree(kvm):
    scs = P.random_scenarios(17, 200)
    totals = {"new": 0, "flush": 0, "steps": 0, "multi": 0}
    observable = None
    for sc in scs:
        doc = P.probe(sc, kvm=kvm)
        bad = [s for s in doc["steps"] if s["verdict"] != "agree"]
        assert not bad and doc["died"] is None, (sc.to_json(), bad[:1])
        observable = doc["not_observable"]
        totals["steps"] += len(doc["steps"])
        totals["new"] += sum(s["observed"]["new_roots"] for s in doc["steps"]
                             if s["fields"]["new_roots"] == "agree")
        totals["flush"] += sum(s["observed"]["tlb_flush"] for s in doc["steps"])
        totals["multi"] += sc.vcpus > 1
    # not vacuous: roots were built (where that is observable), flushes counted,
    # two-vCPU programs ran
    assert totals["steps"] == 2400 and totals["flush"] > 300 and totals["multi"] == 50
    if "new_roots" not in observable:
        assert totals["new"] > 100


@pytest.mark.parametrize("name, era, step, field", [
    ("efer-nx-toggle", "v5.18", 0, "new_roots"),     # shadow roots keep EFER.NX=1 from v5.19
    ("cr4-pge-toggle", "v5.15", 0, "tlb_flush"),     # PGE was still a role bit
    ("cr4-smep", "v5.17", 0, "tlb_flush"),           # no SMEP 0->1 flush before v5.18
])
def test_older_eras_disagree_with_this_kernel(kvm, name, era, step, field):
    """The comparison can fail: eras this kernel is not disagree where they differ."""
    sc = load_scenario(ROOT / "scenarios" / f"{name}.json")
    try:
        doc = P.probe(sc, era=era, kvm=kvm)
        here = P.probe(sc, kvm=kvm)
    except P.CannotRun as err:
        pytest.skip(f"the probe cannot run {name} here: {err}")
    assert not doc["agree"] and doc["steps"][step]["fields"][field] == "disagree"
    assert here["agree"]


def test_a_guest_that_dies_is_reported_at_its_step(kvm):
    """MOV CR3 with bit 63 and CR4.PCIDE=0 sets a reserved bit: #GP, and with no
    IDT a triple fault.  The model predicts the fault: the step agrees, the
    steps after it are not run."""
    sc = parse_scenario({"start": "long-mode", "events": [
        {"op": "mov_cr3", "value": "0x2000"}, {"op": "mov_cr3", "value": "0x8000000000001000"},
        {"op": "mov_cr3", "value": "0x1000"}]})
    doc = P.probe(sc, kvm=kvm)
    assert doc["died"] == {"step": 1, "vcpu": 0, "exit": "SHUTDOWN", "detail": ""}
    assert _verdicts(doc) == ["agree", "agree", None]
    assert doc["steps"][1]["fields"]["fault"] == "agree"
    assert doc["steps"][2]["fields"]["fault"] == "not run"
    assert doc["agree"] and doc["totals"]["run"] == 2


def test_cli_end_to_end(kvm):
    r = subprocess.run([sys.executable, "-m", "mmu_model", "probe", "scenarios/cr3-no-pcid.json",
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["contract"] == 1 and doc["era"] == P.era_for_kernel(os.uname().release)
    assert doc["backend"]["vendor"] in ("vmx", "svm", "pvm")
    r = subprocess.run([sys.executable, "-m", "mmu_model", "probe", "scenarios/efer-nx-toggle.json",
                        "--era", "v5.18"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "disagree on new_roots" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mmu_model", "probe", "scenarios/smi-rsm.json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1


TRACE_OPT_IN = "MMU_PROBE_TRACE"       # CI observes through stats only


def trace_or_skip():
    if os.environ.get(TRACE_OPT_IN) != "1":
        pytest.skip(f"traced probe runs are opt-in ({TRACE_OPT_IN}=1): CI uses stats only")
    if os.geteuid() != 0:
        pytest.skip("--trace needs root (tracefs)")


@pytest.fixture
def tracer(kvm):
    trace_or_skip()
    try:
        t = TraceSession().__enter__()
    except TraceUnavailable as err:
        pytest.skip(f"no tracefs here: {err}")
    yield t
    t.close()


def test_traced_runs_agree_on_where_each_root_came_from(kvm, tracer):
    """With the kvm_mmu_get_page tracepoint, "hash" and "neither" (a prev_roots
    hit or the same root) come apart: every library scenario the probe runs and
    200 random programs agree on it too, and all three sources occur."""
    seen = {}
    scs = []
    for name in LIBRARY:
        sc = load_scenario(ROOT / "scenarios" / name)
        try:
            P.probe(sc, kvm=kvm)
        except P.CannotRun:
            continue
        scs.append(sc)
    for sc in scs + P.random_scenarios(17, 200):
        doc = P.probe(sc, kvm=kvm, tracer=tracer)
        assert doc["agree"], [s for s in doc["steps"] if s["verdict"] != "agree"][:1]
        for s in doc["steps"]:
            assert s["fields"]["root_source"] == "agree"
            seen[s["observed"]["root_source"]] = seen.get(s["observed"]["root_source"], 0) + 1
    assert set(seen) == {"new", "hash", "neither"} and min(seen.values()) > 50


def test_trace_leaves_tracing_as_found(kvm):
    trace_or_skip()
    before = _tracing_state()
    try:
        doc = P.probe(load_scenario(ROOT / "scenarios" / "cr0-wp-toggle.json"), kvm=kvm, trace=True)
    except TraceUnavailable as err:
        pytest.skip(f"no tracefs here: {err}")
    assert [s["observed"]["root_source"] for s in doc["steps"]] == ["new", "hash"]
    assert _tracing_state() == before      # no mount, instance or event left


def test_random_programs_are_seeded():
    a = [s.to_json() for s in P.random_scenarios(5, 20)]
    assert a == [s.to_json() for s in P.random_scenarios(5, 20)]
    assert a != [s.to_json() for s in P.random_scenarios(6, 20)]


def _backend_here(kvm):
    return P.detect_backend(kvm)


def test_why_each_step_has_a_second_marker(kvm):
    """Under PVM the guest is emulated in batches: the flush that cr3-no-pcid's
    second MOV CR3 requests is serviced at the next entry, after the first
    marker's exit, so counting at the first marker would put it in the next
    step.  On hardware both markers see it."""
    from mmu_model.probe import guest
    from mmu_model.probe.stats import StatsReader as SR
    sc = load_scenario(ROOT / "scenarios" / "cr3-no-pcid.json")
    progs, _ = program.build(sc.events, sc.start, 1)
    vm = api.Vm(kvm, guest.MEM_SIZE)
    try:
        guest.write_memory(vm.mem, {0x1000, 0x2000}, progs)
        v = vm.create_vcpu()
        v.set_cpuid(kvm.supported_cpuid())
        v.set_sregs(guest.long_mode_sregs(v.get_sregs(), sc.start))
        v.set_regs(guest.start_regs(0))
        stats = SR(v.stats_fd())
        try:
            P._run_to(v, program.PORT_END)
            at = {}
            for i in range(len(sc.events)):
                base = stats.read()["tlb_flush"]
                P._run_to(v, program.PORT_SETTLE)
                first = stats.read()["tlb_flush"] - base
                P._run_to(v, program.PORT_END)
                at[i] = (first, stats.read()["tlb_flush"] - base)
        finally:
            stats.close()
    finally:
        vm.close()
    assert all(end == 1 for _, end in at.values())       # one request-driven flush per MOV CR3
    if _backend_here(kvm).vendor == "pvm":
        assert at[1] == (0, 1) and at[2] == (0, 1)


def test_model_assumption_cs_l_zero_disagrees_with_a_64_bit_guest(kvm, monkeypatch):
    """docs/probe.md: the model takes CS.L as 0, so clearing CR0.PG in long mode
    is allowed there; a 64-bit guest gets #GP (SDM: MOV CR0 with PG=0 in
    64-bit mode).  The probe refuses such scenarios; forced, they disagree."""
    sc = parse_scenario({"start": "long-mode", "events": [{"op": "mov_cr0", "clear": ["PG"]}]})
    monkeypatch.setattr(P, "cannot_run", lambda *a, **k: None)
    doc = P.probe(sc, kvm=kvm)
    assert doc["died"]["exit"] == "SHUTDOWN" and doc["died"]["step"] == 0
    assert doc["steps"][0]["predicted"]["fault"] is None
    assert doc["steps"][0]["fields"]["fault"] == "disagree" and not doc["agree"]


def test_this_kernel_accepts_cr4_bits_its_cpuid_lacks(kvm):
    """docs/probe.md, this kernel's changes: under PVM, CR4.SMEP, SMAP,
    FSGSBASE and PKE are accepted although KVM_GET_SUPPORTED_CPUID lacks them
    (upstream makes them reserved then: __kvm_is_valid_cr4()); CR4.PCIDE,
    LA57 and VMXE are refused."""
    if _backend_here(kvm).vendor != "pvm":
        pytest.skip("a PVM kernel's behaviour")
    cpuid = kvm.supported_cpuid()
    ents = api.cpuid_entries(cpuid)
    features = (("ebx", 7), ("ebx", 20), ("ebx", 0), ("ecx", 3))   # SMEP SMAP FSGSBASE PKU
    if any(P._has(ents, 7, 0, reg, bit) for reg, bit in features):
        pytest.skip("this kernel's CPUID lists one of SMEP, SMAP, FSGSBASE, PKU")
    bits = 1 << 20 | 1 << 21 | 1 << 16 | 1 << 22 | 1 << 12 | 1 << 13 | 1 << 17
    assert P.refused_bits(kvm, cpuid, LM, bits, 0) == ["CR4.LA57", "CR4.VMXE", "CR4.PCIDE"]


def test_docs_table_is_this_machine(kvm):
    """docs/probe.md lists what the probe does with each library scenario on a
    PVM 6.18 host; on such a host, the table is what happens."""
    b = _backend_here(kvm)
    if b.vendor != "pvm" or P.era_for_kernel(b.kernel) != "v6.18":
        pytest.skip("the table is for a PVM host running a 6.6-6.18 kernel")
    text = (ROOT / "docs" / "probe.md").read_text()
    table = text.split("<!-- probe-table -->")[1].split("<!-- /probe-table -->")[0]
    rows = {}
    for line in table.strip().splitlines()[2:]:
        name, here = [c.strip() for c in line.strip("|").split("|")]
        rows[name.strip("`")] = here
    got = {}
    for name in LIBRARY:
        sc = load_scenario(ROOT / "scenarios" / name)
        try:
            doc = P.probe(sc, kvm=kvm)
            t = doc["totals"]
            got[name[:-5]] = f"runs: {t['agree']} of {t['steps']} steps agree"
        except P.CannotRun as err:
            got[name[:-5]] = f"refused: {err.kind}"
    assert rows == got


def test_stats_read_by_name():
    blob = _stats_blob(["tlb_flush", "exits"], [3, 99])
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.flush()
        r = StatsReader(os.dup(f.fileno()))
        try:
            assert r.read(["exits"]) == {"exits": 99}
            with pytest.raises(KeyError, match="no stat mmu_cache_miss"):
                r.read(["mmu_cache_miss"])
        finally:
            r.close()


VARIANT = '''
from mmu_model import get_era, register_era
try:
    from mmu_model.requests import KVM_REQ, kvm_make_request
except ImportError:                              # after the layer move
    from mmu_model.kernel.requests import KVM_REQ, kvm_make_request


def kvm_post_set_cr4(vcpu, old_cr4, cr4):
    """A patch that forgets the guest TLB flush on a CR4.PGE toggle."""
    changed = cr4 ^ old_cr4
    if changed & vcpu.kvm.era.cr4_role_bits:
        vcpu.ops.kvm_mmu_reset_context(vcpu)
    if cr4 & (1 << 20) and not old_cr4 & (1 << 20):
        kvm_make_request(KVM_REQ.TLB_FLUSH_CURRENT, vcpu)


register_era(get_era("v6.18").derive("v6.18~probe-no-pge-flush", "test variant",
                                     kvm_post_set_cr4=kvm_post_set_cr4))
'''


def test_a_variant_is_probed_against_the_kernel(kvm, tmp_path):
    """--variants: the model of a patch against the running kernel; this kernel
    still flushes on CR4.PGE, so the variant disagrees at both toggles."""
    (tmp_path / "v.py").write_text(VARIANT)
    r = subprocess.run([sys.executable, "-m", "mmu_model", "probe", "scenarios/cr4-pge-toggle.json",
                        "--variants", str(tmp_path / "v.py"), "--era", "v6.18~probe-no-pge-flush",
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert [s["fields"]["tlb_flush"] for s in doc["steps"]] == ["disagree", "disagree"]
    assert [s["observed"]["tlb_flush"] for s in doc["steps"]] == [1, 1]
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('oops')")
    r = subprocess.run([sys.executable, "-m", "mmu_model", "probe", "scenarios/cr4-pge-toggle.json",
                        "--variants", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and "RuntimeError: oops" in r.stderr
