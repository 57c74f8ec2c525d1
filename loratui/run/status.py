"""``loratui status``: one line (or JSON object) per run, asked of the run itself when it is alive.

A live run answers on its socket. A run that has ended says how in its record.
A run whose process is gone without saying so is *dead*: shown at its last
logged step, with the command that resumes it.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any

from loratui.loss_smoothing import LossSmoother
from loratui.project import ProjectPaths
from loratui.run import notify
from loratui.run.client import NoLiveRun, RunClient
from loratui.run.record import FINAL_STATES, read_record
from loratui.run.tracker import read_metric_rows


def run_status(project: Path) -> dict[str, Any]:
    """The status of a project's run, live or not (keys as in ``status --json``)."""
    project = Path(project).expanduser().resolve()
    record = read_record(project)
    base: dict[str, Any] = {"project": str(project), "name": project.name, "state": "none", "step": 0,
                            "total_steps": None, "loss": None, "it_s": None, "eta_s": None, "cost": None,
                            "cost_projected": None, "pid": None, "host": None, "lora_path": None, "message": None,
                            "resume_command": None}
    if record is None:
        return {**base, **_from_metrics(project), "state": "none"}
    base.update(pid=record.pid, host=record.host, resume_command=record.resume_command,
                lora_path=record.lora_path or None, message=record.message or None,
                total_steps=record.total_steps or None, step=record.step)
    if record.alive_elsewhere():  # a project folder shared between machines: only that one can ask it
        from_disk = _from_metrics(project)
        return {**base, **from_disk, "state": record.state, "step": max(record.step, from_disk["step"]),
                "message": f"it runs on {record.host} (process {record.pid}); ask there: loratui status {project}"}
    if record.process_alive():
        try:
            with RunClient.connect(project) as client:
                live = client.request("status")
            live.pop("reply", None)
            return {**base, **live}
        except (NoLiveRun, OSError) as exc:
            if record.state not in FINAL_STATES:  # ended and closing its socket: the record says how
                return {**base, **_from_metrics(project), "state": "unresponsive", "message": str(exc)}
    from_disk = _from_metrics(project)
    end = record.ended_at or record.updated_at
    cost = notify.cost_so_far(record.cost_per_hour, record.started_at, end)
    if record.state in FINAL_STATES:
        return {**base, **from_disk, "state": record.state, "step": record.step or from_disk["step"],
                "cost": cost, "cost_projected": cost}
    # The process is gone but never said it ended: killed, crashed, or the machine rebooted.
    return {**base, **from_disk, "state": "dead", "cost": cost, "cost_projected": cost,
            "message": f"the training process ({record.pid}) is gone; resume with: {record.resume_command}"}


def _from_metrics(project: Path) -> dict[str, Any]:
    rows = read_metric_rows(ProjectPaths(project).metrics)
    if not rows:
        return {"step": 0, "loss": None}
    smoother = LossSmoother()
    for row in rows:
        smoother.update(float(row.get("loss", math.nan)))
    last = rows[-1]
    loss = smoother.value
    return {"step": last["step"], "total_steps": last.get("total_steps"), "loss": None if math.isnan(loss) else loss}


def _money(value: float | None) -> str:
    return "" if value is None else f"${value:,.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def format_line(status: dict[str, Any]) -> str:
    """One line: project, state, step/total, loss, it/s, ETA, cost (and what to do for a dead run)."""
    total = status.get("total_steps")
    parts = [f"{status.get('name') or Path(status['project']).name:<20}", f"{status['state']:<12}",
             f"step {status.get('step', 0)}/{total if total else '?'}"]
    if status.get("loss") is not None:
        parts.append(f"loss {status['loss']:.4f}")
    if status.get("it_s"):
        parts.append(f"{status['it_s']:.2f} it/s")
    if status.get("eta_s") is not None:
        parts.append(f"eta {_duration(status['eta_s'])}")
    if status.get("paused_s") is not None:
        parts.append(f"paused {_duration(status['paused_s'])}")
    if status.get("cost") is not None:
        cost = f"cost {_money(status['cost'])}"
        if status.get("cost_projected") is not None and status["state"] in ("training", "paused"):
            cost += f" → {_money(status['cost_projected'])}"
        parts.append(cost)
    line = "  ".join(parts)
    if status["state"] == "dead":
        line += f"\n  resume with: {status.get('resume_command')}"
    elif status.get("host") and status["host"] != socket.gethostname() and status.get("message"):
        line += f"\n  {status['message']}"
    elif status["state"] == "failed" and status.get("message"):
        line += f"\n  {str(status['message']).splitlines()[0]}"
    return line
