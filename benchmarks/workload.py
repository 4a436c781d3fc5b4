"""The seeded PCID workload of issue 15, as a scenario file the CLI runs.

MOV CR3 among 8 PCIDs with and without the no-flush bit, CR0.WP and CR4.PGE
toggles, INVPCID, INVLPG and SMI/RSM pairs, spread over 1 or more vCPUs.

    python benchmarks/workload.py --events 100000 --vcpus 8 --seed 1 > w.json
"""
from __future__ import annotations

import argparse
import json
import random
import sys

PCIDS = 8


def events(n: int, vcpus: int = 1, seed: int = 1):
    """``n`` events as a scenario file writes them (hex strings, bit names)."""
    rng = random.Random(f"issue-15/{vcpus}/{seed}")
    spaces = [0x1000 * (i + 1) | i for i in range(PCIDS)]
    smm = [False] * vcpus
    for _ in range(n):
        v = rng.randrange(vcpus)
        r = rng.random()
        if smm[v]:
            ev, smm[v] = {"op": "rsm"}, False
        elif r < 0.55:
            value = rng.choice(spaces) | (rng.random() < 0.7) << 63
            ev = {"op": "mov_cr3", "value": hex(value)}
        elif r < 0.70:
            ev = {"op": "mov_cr0", rng.choice(("set", "clear")): ["WP"]}
        elif r < 0.78:
            ev = {"op": "mov_cr4", rng.choice(("set", "clear")): ["PGE"]}
        elif r < 0.88:
            ev = {"op": "invlpg", "addr": hex(rng.randrange(1 << 47) & ~0xFFF)}
        elif r < 0.97:
            ev = {"op": "invpcid", "type": rng.randrange(4), "pcid": rng.randrange(PCIDS),
                  "addr": "0x1000"}
        else:
            ev, smm[v] = {"op": "smi"}, True
        if vcpus > 1:
            ev["vcpu"] = v
        yield ev


def write_scenario(out, n: int, vcpus: int = 1, seed: int = 1, mode: str = "shadow") -> None:
    """Write the workload to the text stream ``out``, one event per line."""
    head = {"name": f"pcid-workload-{n}-{vcpus}", "description":
            f"issue 15's seeded PCID workload: {n} events on {vcpus} vCPU(s), seed {seed}",
            "mode": mode, "vendor": "vmx", "vcpus": vcpus, "start": "long-mode-pcid"}
    out.write(json.dumps(head)[:-1] + ', "events": [\n')
    first = True
    for ev in events(n, vcpus, seed):
        out.write(("" if first else ",\n") + json.dumps(ev, separators=(",", ":")))
        first = False
    out.write("\n]}\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mode", default="shadow")
    args = ap.parse_args(argv)
    write_scenario(sys.stdout, args.events, args.vcpus, args.seed, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
