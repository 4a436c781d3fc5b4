"""The seeded quiz: reproducible, and its answers are the model's."""
import io

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
