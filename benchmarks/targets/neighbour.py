"""A busy neighbour: spins `--duty` of each 20 ms on its CPU, sleeps the rest, for at most
`--seconds`. Standard library only. The `busy-neighbour` mode runs it on the CPU the
async-inspect CLI would use, with a plain target: what the CLI's own CPU use costs the target
through the machine (two vCPUs may share a physical core), with no agent anywhere."""

from __future__ import annotations

import argparse
import time

SLICE = 0.02

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--duty", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    ends = time.monotonic() + args.seconds
    while time.monotonic() < ends:
        spin_until = time.perf_counter() + SLICE * args.duty
        while time.perf_counter() < spin_until:
            pass
        time.sleep(SLICE * (1 - args.duty))
