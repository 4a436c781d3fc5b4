"""The seeded quiz: reproducible, and its answers are the model's."""
import io
import re

from mmu_model import Simulation
from mmu_model.classroom import quiz
from mmu_model.harness.scenario import parse_event


def run_main(argv) -> str:
    out = io.StringIO()
    assert quiz.main(argv, out=out) == 0
    return out.getvalue()


def test_same_seed_same_bytes():
    """Two runs with one seed print the same bytes; another seed prints something else."""
    a = run_main(["-s", "7", "-n", "4", "-c"])
    assert a == run_main(["-s", "7", "-n", "4", "-c"])
    assert a != run_main(["-s", "8", "-n", "4", "-c"])


def test_parameters_echoed_first():
    """Like OSTEP's simulators, the output starts with every parameter."""
    text = run_main(["-s", "3", "-n", "2"])
    assert text.splitlines()[:3] == ["ARG seed 3", "ARG questions 2", "ARG compute False"]
    assert "Answer: predict it" in text and "kernel calls" not in text
    assert "kernel calls" in run_main(["-s", "3", "-n", "2", "-c"])


def test_answers_agree_with_the_model():
    """Replaying each question's events gives the step its answer states."""
    for q in quiz.generate(11, 8):
        sim = Simulation(q["era"], q["mode"], q["vendor"], 1, q["start"])
        for ev in q["prefix"]:
            assert sim.apply(ev)["fault"] is None
        ids = [sim.kvm.vcpus[0].mmu.root.hpa.id] if sim.kvm.vcpus[0].mmu.root.hpa else []
        assert ids == q["before_ids"][:1]
        step = sim.apply(q["event"])
        a = q["answer"]
        assert a["root_source"] == step["root_source"]
        assert a["tlb_flushes"] == step["tlb_flushes"] and a["requests"] == step["requests"]
        freed = {f["id"] for f in step["freed"]}
        assert {r for r, m in a["roots"].items() if m == "freed"} == freed & set(q["before_ids"])


def test_answer_key_one_line_each():
    """The teachers' key has one line per question."""
    text = run_main(["-s", "5", "-n", "6", "--key"])
    assert len(text.splitlines()) == 6 and text.startswith("1: ")


def test_events_are_valid_scenario_events():
    """Every generated event parses as a scenario event (so it can go into a file)."""
    for q in quiz.generate(2, 5):
        for ev in q["prefix"] + [q["event"]]:
            parse_event(ev, "event", 1)


# ---------------------------------------------------------------------------
# Scoping: --era, --mode, --no-nested, --level

def test_scoped_quiz_asks_only_what_was_asked():
    """A week-3 quiz: v6.18, shadow vs TDP, no nesting, level 1: every question is
    that, starts from a long-mode preset and has no events before the one to predict."""
    text = run_main(["-s", "9", "-n", "8", "--era", "v6.18", "--mode", "shadow,tdp",
                     "--no-nested", "--level", "1"])
    assert text.splitlines()[3:6] == ["ARG era v6.18", "ARG mode shadow,tdp", "ARG level 1"]
    qs = quiz.generate(9, 8, eras="v6.18", modes=["shadow", "tdp"], nested=False, level=1)
    assert {q["era"] for q in qs} == {"v6.18"} and {q["mode"] for q in qs} <= {"shadow", "tdp"}
    assert all(q["prefix"] == [] and q["start"] in ("long-mode", "long-mode-pcid") for q in qs)
    assert text.count("events so far: none") == 8


def test_levels_and_no_nested():
    """Level 2 puts events first; level 3 (the default) reaches SMM/INIT/SET_SREGS;
    --no-nested leaves nested TDP out of every question."""
    two = quiz.generate(4, 12, level=2)
    assert all(1 <= len(q["prefix"]) <= quiz.PREFIX_MAX for q in two)
    assert {e["op"] for q in two for e in q["prefix"] + [q["event"]]} <= {
        "mov_cr0", "mov_cr4", "wrmsr_efer", "mov_cr3"}
    three = quiz.generate(4, 30)
    assert {e["op"] for q in three for e in q["prefix"] + [q["event"]]} & {
        "smi", "rsm", "init", "set_sregs"}
    assert "nested-tdp" in {q["mode"] for q in three}
    assert "nested-tdp" not in {q["mode"] for q in quiz.generate(4, 30, nested=False)}


def test_same_options_same_bytes():
    """Same seed and options: the same quiz byte for byte; another level: another quiz."""
    args = ["-s", "6", "-n", "5", "-c", "--era", "v5.17,v6.18", "--mode", "tdp", "--level", "2"]
    assert run_main(args) == run_main(args)
    assert run_main(args) != run_main(args[:-1] + ["3"])


def test_bad_scope_is_one_line_exit_2(capsys):
    """An unknown era, or --no-nested with only nested-tdp: one line, exit 2, no stdout."""
    for argv, what in ((["--era", "v9.9"], "--era: unknown era 'v9.9'"),
                       (["--mode", "nested-tdp", "--no-nested"], "--no-nested: no mode is left")):
        from mmu_model.cli import main
        assert main(["quiz", *argv]) == 2
        cap = capsys.readouterr()
        assert cap.out == "" and cap.err.count("\n") == 1 and what in cap.err


def test_every_answer_ends_with_why_naming_the_deciding_function():
    """Each answer's last line is a why that names a kernel function from the step's own
    trace (or, with no exit, the vendor function that leaves the instruction to the
    guest) and the kernel file it is in."""
    qs = quiz.generate(11, 20)
    for q in qs:
        last = quiz.answer_text(q).splitlines()[-1]
        assert last.startswith("    Why: ") and last == f"    Why: {q['answer']['why']}"
        fn = q["answer"]["decided_by"]
        assert f"{fn}()" in last
        if q["answer"]["intercepted"]:
            assert f"{fn}()" in q["trace"] or f"{fn}();" in q["trace"]
        else:
            assert (q["vendor"], q["event"]["op"]) in quiz.NO_EXIT_BY
        assert re.search(r"\((arch|include)/[\w/]+\.[ch]\)|in no kernel tree", last), last
    key = run_main(["-s", "11", "-n", "20", "--key"]).splitlines()
    assert all(line.endswith(f"| by {q['answer']['decided_by']}()") for line, q in zip(key, qs))


def test_why_for_known_cases():
    """v5.17: CR0.WP under TDP is a role bit, so kvm_post_set_cr0() resets the context
    and frees the root; v6.18 on VMX with EPT: WP is guest-owned, no exit."""
    old = Simulation("v5.17", "tdp", "vmx", 1, "long-mode").apply({"op": "mov_cr0", "clear": ["WP"]})
    decider, line = quiz.why(old, "v5.17", "vmx")
    assert decider == "kvm_post_set_cr0" and "root #1 freed" in line
    assert "(arch/x86/kvm/x86.c)" in line and "kvm_mmu_reset_context()" in line
    new = Simulation("v6.18", "tdp", "vmx", 1, "long-mode").apply({"op": "mov_cr0", "clear": ["WP"]})
    decider, line = quiz.why(new, "v6.18", "vmx")
    assert decider == "vmx_l1_guest_owned_cr0_bits" and line.startswith("no VM exit")
