"""How a rank decides that another one is gone, and the store barrier, on an in-memory store: fast checks of
the logic the two-process tests in test_multiprocess.py exercise end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from loratui.commands import CommandChannel
from loratui.engine import distributed
from loratui.engine.distributed import BarrierTimeout, PeerLost, Ranks


def _pair() -> tuple[Ranks, Ranks]:
    store = dist.HashStore()
    return Ranks(0, 2, store), Ranks(1, 2, store)


def _register(ranks: Ranks, pid: int, host: str | None = None) -> None:
    ranks.store.set(f"loratui/proc/{ranks.rank}", json.dumps({"pid": pid, "host": host or ranks.host}))


def test_all_well_while_the_peer_beats() -> None:
    zero, one = _pair()
    _register(one, os.getpid())
    one.store.add("loratui/beat/1", 1)
    assert zero.peer_problem() is None


def test_a_peer_that_recorded_its_failure_is_named_with_its_reason() -> None:
    zero, one = _pair()
    one.record_failure("the GPU ran out of memory")
    assert zero.peer_problem() == "rank 1 failed: the GPU ran out of memory"


def test_a_peer_whose_process_is_gone_on_this_host_is_found_at_once() -> None:
    zero, one = _pair()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _register(one, gone.pid)
    problem = zero.peer_problem()
    assert problem is not None and problem.startswith(f"rank 1 (process {gone.pid}) is gone")


def test_a_silent_peer_is_lost_after_the_silence_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    zero, one = _pair()
    _register(one, os.getpid(), host="elsewhere")  # another machine: only its heartbeat can tell
    clock = [100.0]
    monkeypatch.setattr(distributed.time, "monotonic", lambda: clock[0])
    assert zero.peer_problem() is None
    clock[0] += distributed.PEER_SILENT_S - 1
    assert zero.peer_problem() is None
    one.store.add("loratui/beat/1", 1)  # a beat resets the silence
    assert zero.peer_problem() is None
    clock[0] += distributed.PEER_SILENT_S - 1
    assert zero.peer_problem() is None
    clock[0] += 2
    problem = zero.peer_problem()
    assert problem is not None and "rank 1 (process" in problem and "on elsewhere) has not answered" in problem


def test_a_peer_that_finished_is_not_mourned() -> None:
    zero, one = _pair()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _register(one, gone.pid)
    one.store.set("loratui/done/1", "1")
    assert zero.peer_problem() is None


def test_a_barrier_names_the_ranks_that_never_came() -> None:
    zero, one = _pair()
    _register(one, os.getpid())
    with pytest.raises(BarrierTimeout, match="ranks 1 did not finish encoding images"):
        zero.barrier("encoding images", timeout_s=0.3)


def test_a_barrier_stops_waiting_when_a_peer_failed() -> None:
    zero, one = _pair()
    one.record_failure("no usable images")
    with pytest.raises(PeerLost, match="rank 1 failed: no usable images .while waiting for every process"):
        zero.barrier("encoding images", timeout_s=60)


def test_a_barrier_passes_once_every_rank_arrived() -> None:
    zero, one = _pair()
    one.store.set("loratui/barrier/1/1", "1")  # rank 1 already at its first barrier
    zero.barrier("encoding images", timeout_s=5)


def test_one_process_needs_none_of_it() -> None:
    alone = Ranks()
    alone.barrier("anything", timeout_s=0)
    assert alone.peer_problem() is None and alone.broadcast(["x"]) == ["x"]
    channel = CommandChannel()
    assert distributed.command_channel(channel, alone) is channel
