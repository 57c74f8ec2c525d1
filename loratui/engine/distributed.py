"""Several processes (one per GPU) as one run.

Rank 0 is the run as the outside sees it: it owns the project lock, the run
record, events, metrics and every file. The other ranks train their share of
each step's micro-batches and stay quiet unless something fails.

Three things keep the ranks in step without ever leaving one of them waiting
for ever:

- Commands (pause, sample, stop…) are read on rank 0 only and broadcast at
  the step boundary (:class:`BroadcastCommands`), so every rank pauses,
  resumes and stops at the same step. While paused, rank 0 repeats an empty
  broadcast every few seconds so no collective waits long enough to time out.
- Barriers go through the rendezvous store with an explicit timeout
  (:meth:`Ranks.barrier`), never through a GPU collective: caching a large
  dataset may take hours, longer than any collective should be allowed to wait.
- A watchdog thread per rank beats a counter in the store and watches the
  others'. A peer that failed with an error, whose process is gone (same host)
  or whose counter stood still for ``PEER_SILENT_S`` ends the run on every
  rank with a message naming it, instead of a hang in the next collective.

Everything here is a no-op for a single process.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from loratui.commands import Command, CommandChannel
from loratui.errors import UserError

log = logging.getLogger("loratui")

# Collectives (gradient all-reduce, the command broadcast) may wait this long for a slow rank: rank 0
# writing a checkpoint or making samples while the others wait. A rank that died is found by the
# watchdog within seconds, so this is a last resort, not how deaths are noticed.
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)
# Encoding latents and captions before training can take hours on a large dataset; the barrier after it
# waits for the slowest rank that long. It runs in the store, not in a collective, so the collective
# watchdog of NCCL never sees it.
CACHE_BARRIER_TIMEOUT_S = 12 * 3600.0
HEARTBEAT_S = 1.0
PEER_SILENT_S = 20.0  # a peer whose heartbeat stands still this long is treated as gone
PAUSE_KEEPALIVE_S = 5.0  # while paused, rank 0 broadcasts "still paused" this often
EXIT_PEER_LOST = 3
_KEY = "loratui"


class PeerLost(UserError):
    """Another rank of this run died or failed; this one stops too."""


class BarrierTimeout(UserError):
    pass


class RanksDisagree(UserError):
    """The ranks would not train the same run (e.g. they see different checkpoints)."""


def env_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched_distributed() -> bool:
    """True inside a process started by torchrun / accelerate launch with more than one process."""
    return env_world_size() > 1


def is_main_process() -> bool:
    """Rank 0, or the only process. Known from the launcher's environment before torch is set up."""
    return env_rank() == 0


class Ranks:
    """This process's place in the run. ``world_size == 1`` makes every method a no-op."""

    def __init__(self, rank: int = 0, world_size: int = 1, store: Any = None, command_group: Any = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.store = store
        self.command_group = command_group
        self.host = socket.gethostname()
        self.lost: str | None = None
        # Set by the runner: reports the loss, releases the lock, returns the message to print.
        self.on_lost: Callable[[str], str] | None = None
        self._barriers = 0
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._peers: dict[int, dict[str, Any]] = {}
        self._beats: dict[int, tuple[int, float]] = {}
        self._report_lock = threading.Lock()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}"

    # ------------------------------------------------------------ barrier
    def barrier(self, what: str, timeout_s: float) -> None:
        """Wait until every rank got here, at most ``timeout_s``; name the ranks still missing if not."""
        if not self.distributed:
            return
        self._barriers += 1
        prefix = f"{_KEY}/barrier/{self._barriers}"
        self.store.set(f"{prefix}/{self.rank}", "1")
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [r for r in range(self.world_size) if not self.store.check([f"{prefix}/{r}"])]
            if not missing:
                return
            problem = self.lost or self.peer_problem()
            if problem:
                raise PeerLost(f"{problem} (while waiting for every process to finish {what})")
            if time.monotonic() > deadline:
                raise BarrierTimeout(
                    f"ranks {', '.join(map(str, missing))} did not finish {what} within {timeout_s / 3600:.1f} h; "
                    "their logs (logs/train-rank<N>.log) say where they are.")
            time.sleep(0.2)

    # ------------------------------------------------------------ commands
    def broadcast(self, payload: Any) -> Any:
        """Rank 0's ``payload`` on every rank (a gloo group on the host: no GPU synchronisation)."""
        if not self.distributed:
            return payload
        import torch.distributed as dist

        box = [payload if self.is_main else None]
        try:
            dist.broadcast_object_list(box, src=0, group=self.command_group)
        except Exception as exc:  # noqa: BLE001 - a peer's death shows here first; say which one
            raise self.explain(exc) from None
        return box[0]

    # ------------------------------------------------------------ failures
    def record_failure(self, message: str) -> None:
        """Tell the other ranks why this one stops, so they can say it instead of 'no heartbeat'."""
        if not self.distributed or self.store is None:
            return
        try:
            self.store.set(f"{_KEY}/failed/{self.rank}", message[:2000])
        except Exception:  # noqa: BLE001 - the store may be gone with rank 0; nothing more to tell
            pass

    def explain(self, exc: BaseException, wait_s: float = 3.0) -> BaseException:
        """A collective failed: a PeerLost naming the rank when a peer is gone, else ``exc`` itself."""
        if not self.distributed or isinstance(exc, UserError):
            return exc
        deadline = time.monotonic() + wait_s
        while True:
            problem = self.lost or self.peer_problem()
            if problem:
                return PeerLost(problem + " This process stopped too.")
            if time.monotonic() > deadline:
                return exc
            time.sleep(0.2)

    def peer_problem(self) -> str | None:
        """Why another rank can no longer take part, or None while all are well."""
        if not self.distributed:
            return None
        try:
            for r in range(self.world_size):
                if r == self.rank or self.store.check([f"{_KEY}/done/{r}"]):
                    continue
                if self.store.check([f"{_KEY}/failed/{r}"]):
                    return f"rank {r} failed: {self.store.get(f'{_KEY}/failed/{r}').decode(errors='replace')}"
                peer = self._peer(r)
                if peer and peer.get("host") == self.host and not _process_alive(int(peer["pid"])):
                    return (f"rank {r} (process {peer['pid']}) is gone: it was killed (SIGKILL, or the system's "
                            "out-of-memory killer) or crashed without a message.")
                beat = int(self.store.add(f"{_KEY}/beat/{r}", 0))
                now = time.monotonic()
                last = self._beats.get(r)
                if last is None or last[0] != beat:
                    self._beats[r] = (beat, now)
                elif now - last[1] > PEER_SILENT_S:
                    where = f" (process {peer['pid']} on {peer['host']})" if peer else ""
                    return (f"rank {r}{where} has not answered for {now - last[1]:.0f} s: it died, hung or lost "
                            "its network connection.")
        except Exception as exc:  # noqa: BLE001 - the store lives with the launcher (or rank 0)
            return (f"the run's rendezvous store stopped answering ({exc.__class__.__name__}): rank 0 or the "
                    "launcher is gone.")
        return None

    def _peer(self, r: int) -> dict[str, Any] | None:
        if r not in self._peers and self.store.check([f"{_KEY}/proc/{r}"]):
            self._peers[r] = json.loads(self.store.get(f"{_KEY}/proc/{r}"))
        return self._peers.get(r)

    # ------------------------------------------------------------ watchdog
    def start_watchdog(self) -> None:
        if not self.distributed or self._watchdog is not None:
            return
        self.store.set(f"{_KEY}/proc/{self.rank}", json.dumps({"pid": os.getpid(), "host": self.host}))
        self._watchdog = threading.Thread(target=self._watch, name="loratui-rank-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.store.add(f"{_KEY}/beat/{self.rank}", 1)
            except Exception:  # noqa: BLE001 - peer_problem says what it means
                pass
            problem = self.peer_problem()
            if problem and not self._stop.is_set():
                self._give_up(problem)
                return

    def _give_up(self, problem: str) -> None:
        """A peer is gone: report once and leave, even if the main thread is stuck in a collective."""
        self.lost = problem
        # The main thread may be about to notice the same thing through a failed collective and report
        # it properly; give it a moment before leaving from here.
        if self._stop.wait(5.0):
            return
        with self._report_lock:
            message = f"{problem} This process ({self.describe()}) stopped too."
            log.error("%s", message)
            if self.on_lost is not None:
                try:
                    message = self.on_lost(message)
                except Exception:  # noqa: BLE001 - leaving matters more than the report
                    log.exception("reporting the lost rank failed")
            print(f"loratui: {message}", file=sys.stderr, flush=True)
            for handler in logging.getLogger("loratui").handlers:
                handler.flush()
            os._exit(EXIT_PEER_LOST)

    # ------------------------------------------------------------ end
    def close(self, *, finished: bool) -> None:
        """Stop watching; a rank that finished says so, so its silence from now on is not a death."""
        if not self.distributed:
            return
        self._stop.set()
        if finished:
            try:
                self.store.set(f"{_KEY}/done/{self.rank}", "1")
            except Exception:  # noqa: BLE001
                pass
        if self._watchdog is not None:
            self._watchdog.join(timeout=2 * HEARTBEAT_S)
        if finished:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _process_alive(pid: int) -> bool:
    """A zombie (dead, not yet reaped by its launcher) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def use_cpu() -> bool:
    """CPU training: asked for with ACCELERATE_USE_CPU, or no GPU. Then the processes talk through gloo."""
    import torch

    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()


def start() -> Ranks:
    """Join the run's process group (when launched with several processes) and start the watchdog.

    Called before anything else of the run, so the process group has our explicit timeout rather than
    a library default, and rank 0 can take the lock while the others wait for it.
    """
    if not launched_distributed():
        return Ranks()
    import torch.distributed as dist
    from accelerate.state import PartialState

    cpu = use_cpu()
    PartialState(cpu=cpu, timeout=PROCESS_GROUP_TIMEOUT)
    if not dist.is_initialized():
        raise RuntimeError("accelerate did not set up the process group")
    backend = dist.get_backend()
    # Commands travel on the host: with NCCL a broadcast would make every step wait for the GPU.
    group = None if backend == "gloo" else dist.new_group(backend="gloo", timeout=PROCESS_GROUP_TIMEOUT)
    from torch.distributed.distributed_c10d import _get_default_store

    ranks = Ranks(dist.get_rank(), dist.get_world_size(), _get_default_store(), group)
    ranks.start_watchdog()
    return ranks


class BroadcastCommands:
    """The trainer's command channel on a multi-process run: rank 0 decides, everyone acts.

    It has the :class:`CommandChannel` interface the trainer reads (``drain`` between steps, ``wait``
    while paused). Every rank calls them at the same points of the loop; rank 0 reads its own queue and
    the others receive what it read, so they act on the same commands at the same step.
    """

    def __init__(self, local: CommandChannel, ranks: Ranks) -> None:
        self.local = local
        self.ranks = ranks

    def send(self, command: Command | str) -> None:
        self.local.send(command)

    def drain(self) -> list[Command]:
        mine = self.local.drain() if self.ranks.is_main else []
        commands, _ = self.ranks.broadcast((mine, False))
        return list(commands)

    def wait(self, timeout: float | None = None) -> Command | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.ranks.is_main:
                left = PAUSE_KEEPALIVE_S if deadline is None else max(0.0, min(PAUSE_KEEPALIVE_S,
                                                                               deadline - time.monotonic()))
                got = self.local.wait(timeout=left)
                over = deadline is not None and time.monotonic() >= deadline
                # "more" tells the others that rank 0 is still waiting; only rank 0's clock decides.
                payload = ([got] if got is not None else [], got is None and not over)
            else:
                payload = None
            commands, more = self.ranks.broadcast(payload)
            if not more:
                return commands[0] if commands else None


def command_channel(local: CommandChannel, ranks: Ranks) -> CommandChannel | BroadcastCommands:
    return BroadcastCommands(local, ranks) if ranks.distributed else local
