"""Does watching a run slow it? One detached run, three dashboards attached against none, in turns.

The run is started once with ``--detach`` and trains for the whole benchmark.
Windows of ``--window`` seconds alternate: no dashboard attached, then three
real dashboards (``loratui attach`` in tmux at 80×24, each repainting as a
user would see it), then none again… The steps each window trained are read
from ``logs/metrics.jsonl`` (the run's own step times, so no client's clock is
involved); the verdict compares the median throughput of the two kinds of
window. Without tmux the dashboards are replaced by three socket clients that
relay every event as the dashboard's worker does (``--clients relay``).

Target: throughput with three dashboards ≥ 0.97 × without.

The dashboards' own CPU (their processes' user + system time during the attached
windows) is printed too: on a GPU server that is what they take from the idle
cores beside the run. ``--pin`` models that server on this machine: the run is
bound to the first usable core and the dashboards to the others, so they cannot
take the run's core.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, load_average, machine_line, scratch_project, table, verdict  # noqa: E402

TARGET = 0.97


def _steps_between(metrics: Path, t0: float, t1: float) -> tuple[int, float]:
    """Steps finished inside [t0, t1) and their summed step time (the run's own measurement)."""
    count, busy = 0, 0.0
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if t0 <= row.get("time", 0) < t1:
            count += 1
            busy += row.get("step_time_s", 0.0)
    return count, busy


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its waited-for children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class TmuxDashboards:
    def __init__(self, project: Path, n: int, cores: str | None = None) -> None:
        self.project, self.n, self.cores = project, n, cores
        self.server = f"loratui-bench-{os.getpid()}"
        self._cpu_start: dict[int, float] = {}
        self.cpu_s = 0.0

    def pids(self) -> list[int]:
        out = subprocess.run(["tmux", "-L", self.server, "list-panes", "-a", "-F", "#{pane_pid}"],
                             capture_output=True, text=True, timeout=30).stdout
        return [int(v) for v in out.split()]

    def mark(self) -> None:
        """Start counting the dashboards' CPU time here (after their start-up)."""
        self._cpu_start = {pid: _cpu_seconds(pid) for pid in self.pids()}

    def attach(self) -> None:
        env = f"PYTHONPATH={shlex.quote(str(REPO))} TERM=xterm-256color"
        if "LORATUI_STATE_DIR" in os.environ:
            env += f" LORATUI_STATE_DIR={shlex.quote(os.environ['LORATUI_STATE_DIR'])}"
        for i in range(self.n):
            cmd = f"exec env {env} {shlex.quote(sys.executable)} -m loratui attach {shlex.quote(str(self.project))}"
            if self.cores:
                cmd = f"exec taskset -c {self.cores} sh -c {shlex.quote(cmd)}"
            subprocess.run(["tmux", "-L", self.server, "new-session", "-d", "-s", f"d{i}", "-x", "80", "-y", "24",
                            cmd], check=True, timeout=30)

    def detach(self) -> None:
        self.cpu_s += sum(_cpu_seconds(pid) - c0 for pid, c0 in self._cpu_start.items())
        for i in range(self.n):
            subprocess.run(["tmux", "-L", self.server, "send-keys", "-t", f"d{i}", "d"], capture_output=True,
                           timeout=30)
        time.sleep(1.0)
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True, timeout=30)


class RelayClients:
    """Socket clients that decode every event, as the dashboard's relay thread does."""

    def __init__(self, project: Path, n: int, cores: str | None = None) -> None:
        self.project, self.n = project, n
        self.cpu_s = 0.0  # the relays run in this process; their CPU is not told apart
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _relay(self) -> None:
        from loratui.events import event_from_dict
        from loratui.run.client import RunClient

        with RunClient.connect(self.project) as client:
            while not self._stop.is_set() and not client.closed:
                obj = client.read(0.2)
                if obj is not None and "event" in obj:
                    event_from_dict(obj)

    def attach(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._relay, daemon=True) for _ in range(self.n)]
        for t in self._threads:
            t.start()

    def mark(self) -> None:
        pass

    def detach(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)


def publish_cost(events: int = 5000, clients: int = 3) -> tuple[float, float]:
    """CPU seconds the run process spends per step event on its socket: none vs ``clients`` reading.

    Counts the training thread's ``publish`` and the server thread's sending (process CPU time, so
    it is what a GPU run pays whatever the dashboards' own processes cost elsewhere); the readers
    are separate processes."""
    import tempfile

    from loratui.events import StepDone
    from loratui.run.server import RunServer

    event = StepDone(step=1, total_steps=1000, epoch=0, loss=0.1, lr=1e-4, step_time_s=0.05, data_time_s=0.0,
                     compute_time_s=0.05, optimizer_time_s=0.0, samples_per_s=20.0, ram_mb=1.0, gpu_alloc_mb=1.0,
                     gpu_peak_mb=1.0)
    folder = Path(tempfile.mkdtemp(prefix="loratui-bench-sock-"))
    server = RunServer(folder / "run.sock", lambda name: {"reply": "ok"}, lambda: {})
    server.start()
    reader = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
              "while s.recv(1 << 20): pass")
    readers: list[subprocess.Popen[bytes]] = []
    results = []
    try:
        for n in (0, clients):
            while len(readers) < n:
                readers.append(subprocess.Popen([sys.executable, "-c", reader, str(server.path)]))
            while server.client_count < n:
                time.sleep(0.05)
            time.sleep(0.5)
            c0 = time.process_time()
            for _ in range(events):
                server.publish(event)
            while any(c.outgoing for c in list(server._clients.values())):  # sent, not just queued
                time.sleep(0.001)
            results.append((time.process_time() - c0) / events)
    finally:
        for r in readers:
            r.kill()
        server.close(linger_s=0)
        shutil.rmtree(folder, ignore_errors=True)
    return results[0], results[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="pairs of windows (none, attached)")
    ap.add_argument("--window", type=float, default=30.0, help="seconds per window")
    ap.add_argument("--dashboards", type=int, default=3)
    ap.add_argument("--clients", choices=("tmux", "relay"), default="tmux" if shutil.which("tmux") else "relay")
    ap.add_argument("--publish-only", action="store_true", help="only the per-event cost inside the run")
    ap.add_argument("--pin", action="store_true",
                    help="bind the run to the first core and the dashboards to the rest, as on a server with spare cores")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) < 2:
        ap.error("--pin needs at least two usable cores")
    run_prefix = ["taskset", "-c", str(cores[0])] if args.pin else []
    dash_cores = ",".join(str(c) for c in cores[1:]) if args.pin else None
    alone, watched = publish_cost(clients=args.dashboards)
    publish_line = (f"run-process CPU per step event on the socket: {alone * 1e6:.0f} µs with no client, "
                    f"{watched * 1e6:.0f} µs with {args.dashboards} reading ({watched / 0.05:.2%} of a 50 ms GPU step)")
    if args.publish_only:
        print(machine_line())
        print(publish_line)
        return 0
    os.environ.setdefault("LORATUI_STATE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) /
                                                  f"loratui-bench-state-{os.getpid()}"))
    project = scratch_project()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([*run_prefix, sys.executable, "-m", "loratui", "train", str(project), "--detach", "--max-steps", "1000000",
                    "--set", "sample.every_n_steps=0", "--set", "save.every_n_steps=0"], check=True, env=env)
    from loratui.run.status import run_status

    metrics = project / "logs" / "metrics.jsonl"
    while run_status(project)["step"] < 3:
        time.sleep(1)
    watchers = (TmuxDashboards if args.clients == "tmux" else RelayClients)(project, args.dashboards, dash_cores)
    rates: dict[str, list[float]] = {"none": [], "attached": []}
    settle = 5.0 if args.clients == "tmux" else 1.0  # a dashboard's start-up is not what is measured
    try:
        for r in range(args.rounds):
            for kind in ("none", "attached"):
                if kind == "attached":
                    watchers.attach()
                time.sleep(settle)
                if kind == "attached":
                    watchers.mark()
                t0 = time.time()
                time.sleep(args.window)
                t1 = time.time()
                if kind == "attached":
                    watchers.detach()
                steps, _ = _steps_between(metrics, t0, t1)
                rates[kind].append(steps / (t1 - t0))
            print(f"  round {r + 1}/{args.rounds}: none {rates['none'][-1]:.2f} it/s, "
                  f"{args.dashboards} attached {rates['attached'][-1]:.2f} it/s (load {load_average()})",
                  file=sys.stderr, flush=True)
    finally:
        subprocess.run([sys.executable, "-m", "loratui", "stop", str(project), "--wait"], env=env,
                       capture_output=True, timeout=600)
    none, attached = statistics.median(rates["none"]), statistics.median(rates["attached"])
    ratio = attached / none if none else float("nan")
    print(machine_line())
    pinned = f"; run on core {cores[0]}, dashboards on {dash_cores}" if args.pin else ""
    print(f"run: sample_project on the CPU, {args.rounds} × ({args.window:.0f} s without, {args.window:.0f} s with "
          f"{args.dashboards} dashboards: {args.clients}{pinned})")
    print(table(["windows", "median it/s", "per window"],
                [["no dashboard", f"{none:.3f}", " ".join(f"{v:.2f}" for v in rates["none"])],
                 [f"{args.dashboards} dashboards", f"{attached:.3f}", " ".join(f"{v:.2f}" for v in rates["attached"])]]))
    print(f"\nattached / none = {ratio:.3f} (target ≥ {TARGET}): {verdict(ratio, TARGET)}")
    if args.clients == "tmux":
        share = watchers.cpu_s / (args.rounds * args.window)
        print(f"the {args.dashboards} dashboards' own CPU while attached: {share:.1%} of one core "
              f"({share / args.dashboards:.1%} each)")
    print(publish_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
