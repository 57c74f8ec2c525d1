"""What keeping several processes in step costs per optimizer step, on two CPU processes (gloo).

Each step of a multi-process run adds two things to the gradient all-reduce that DDP does anyway: the
command broadcast from rank 0 (``BroadcastCommands.drain``, on the host) and the all-reduce of the step's
loss for the metrics. This times both, in turns, against an empty all-reduce of one number as the floor
of any collective. Run from the repository root; it starts its two processes itself:

    python benchmarks/bench_ranks.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _worker(rounds: int) -> None:
    import torch
    import torch.distributed as dist

    from loratui.commands import CommandChannel
    from loratui.engine import distributed

    torch.set_num_threads(1)
    ranks = distributed.start()
    channel = distributed.BroadcastCommands(CommandChannel(), ranks)
    loss = torch.ones(())
    timings: dict[str, list[float]] = {"command broadcast (drain)": [], "loss all-reduce": [],
                                       "floor: all-reduce of one number": []}
    for _ in range(rounds):
        for name, call in (("command broadcast (drain)", channel.drain),
                           ("loss all-reduce", lambda: dist.all_reduce(loss.clone())),
                           ("floor: all-reduce of one number", lambda: dist.all_reduce(torch.zeros(1)))):
            ranks.barrier("timing", timeout_s=60)
            t0 = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - t0)
    if ranks.is_main:
        from benchmarks.common import load_average, machine_line

        print(machine_line(threads=1))
        print(f"load average: {load_average()}; {rounds} rounds, 2 processes, gloo\n")
        print("| per optimizer step | median | p90 |\n|---|---|---|")
        for name, values in timings.items():
            values.sort()
            p90 = values[int(0.9 * len(values))]
            print(f"| {name} | {statistics.median(values) * 1e3:.3f} ms | {p90 * 1e3:.3f} ms |")
    ranks.close(finished=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    if "RANK" in os.environ:
        _worker(args.rounds)
        return 0
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            __file__, "--rounds", str(args.rounds)], env=env)


if __name__ == "__main__":
    sys.exit(main())
