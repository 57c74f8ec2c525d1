"""When a run ends: the user's command and webhook, and what the box has cost.

The command is how a rented GPU stops itself (``runpodctl stop pod
$RUNPOD_POD_ID``, ``shutdown -h +5``), so it runs only after the final LoRA
and checkpoint are on disk (fsynced), and a failing command or an unreachable
webhook is logged, never fatal: the run's files are what matter.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratui.config import ProjectConfig

log = logging.getLogger("loratui.run")

COST_ENV = "LORATUI_COST_PER_HOUR"
COMMAND_TIMEOUT_S = 300
WEBHOOK_TIMEOUT_S = 10
WHEN = {
    "always": ("finished", "stopped", "aborted", "failed", "paused"),
    "finished": ("finished", "stopped", "paused"),
    "failed": ("failed", "aborted", "paused"),
}
"""Which end states each ``notify.when`` reports; a forgotten pause is always worth a word."""


@dataclass(frozen=True)
class NotifySettings:
    command: str = ""
    webhook: str = ""
    when: str = "always"
    cost_per_hour: float = 0.0
    paused_minutes: float = 0.0
    countdown_s: float = 0.0

    @classmethod
    def from_config(cls, cfg: ProjectConfig) -> NotifySettings:
        n = cfg.notify
        return cls(command=n.command, webhook=n.webhook, when=n.when, cost_per_hour=cost_per_hour(cfg),
                   paused_minutes=n.paused_minutes, countdown_s=n.countdown_s)

    @property
    def enabled(self) -> bool:
        return bool(self.command or self.webhook)

    def wants(self, status: str) -> bool:
        return self.enabled and status in WHEN.get(self.when, ())

    def describe(self) -> str:
        parts = []
        if self.command:
            parts.append(f"run `{self.command}`")
        if self.webhook:
            parts.append(f"POST to {urllib.parse.urlsplit(self.webhook).netloc or self.webhook}")
        return " and ".join(parts)


def cost_per_hour(cfg: ProjectConfig) -> float:
    """``notify.cost_per_hour``, else ``$LORATUI_COST_PER_HOUR``, else 0 (no cost shown)."""
    if cfg.notify.cost_per_hour > 0:
        return cfg.notify.cost_per_hour
    raw = os.environ.get(COST_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number; no cost is shown", COST_ENV, raw)
        return 0.0
    return value if value > 0 else 0.0


def cost_so_far(rate: float, started_at: float, now: float | None = None) -> float | None:
    if rate <= 0:
        return None
    return rate * max((now or time.time()) - started_at, 0.0) / 3600


def projected_cost(rate: float, started_at: float, eta_s: float | None, now: float | None = None) -> float | None:
    spent = cost_so_far(rate, started_at, now)
    if spent is None or eta_s is None:
        return spent
    return spent + rate * eta_s / 3600


def fsync_file(path: Path) -> None:
    """Make sure a finished file is on the disk before anything may power the machine off."""
    from loratui.lora.safetensors_io import fsync_folder  # the run process has torch loaded already

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_folder(path.parent)


def payload(*, project: Path, status: str, step: int, total_steps: int, lora_path: str | None, message: str,
            cost: float | None) -> dict[str, Any]:
    return {"project": str(project), "name": project.name, "status": status, "step": step,
            "total_steps": total_steps, "lora_path": lora_path or "", "message": message,
            "cost": None if cost is None else round(cost, 4), "host": socket.gethostname(),
            "time": time.time()}


def send(settings: NotifySettings, data: dict[str, Any]) -> tuple[bool, str]:
    """Run the command and POST the webhook; (everything worked, what happened in words)."""
    results: list[str] = []
    ok = True
    if settings.command:
        good, text = _run_command(settings.command, data)
        ok &= good
        results.append(text)
    if settings.webhook:
        good, text = _post_webhook(settings.webhook, data)
        ok &= good
        results.append(text)
    return ok, "; ".join(results)


def _run_command(command: str, data: dict[str, Any]) -> tuple[bool, str]:
    env = dict(os.environ)
    env.update({
        "LORATUI_STATUS": data["status"], "LORATUI_STEP": str(data["step"]),
        "LORATUI_TOTAL_STEPS": str(data["total_steps"]), "LORATUI_LORA": data["lora_path"],
        "LORATUI_PROJECT": data["project"], "LORATUI_MESSAGE": data["message"],
        "LORATUI_COST": "" if data["cost"] is None else f"{data['cost']:.2f}",
    })
    try:
        done = subprocess.run(command, shell=True, env=env, cwd=data["project"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=COMMAND_TIMEOUT_S, start_new_session=True)
    except subprocess.TimeoutExpired:
        log.warning("notify.command did not finish within %d s: %s", COMMAND_TIMEOUT_S, command)
        return False, f"command still running after {COMMAND_TIMEOUT_S} s"
    except OSError as exc:
        log.warning("notify.command could not start: %s (%s)", command, exc)
        return False, f"command could not start: {exc}"
    output = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
    if output:
        log.info("notify.command said: %s", output[-2000:])
    if done.returncode != 0:
        log.warning("notify.command exited with %d: %s", done.returncode, command)
        return False, f"command exited with {done.returncode}"
    log.info("notify.command ran: %s", command)
    return True, "command ran"


def _post_webhook(url: str, data: dict[str, Any]) -> tuple[bool, str]:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        log.warning("notify.webhook %r is not an http(s) URL; not sent", url)
        return False, "webhook is not an http(s) URL"
    request = urllib.request.Request(url, data=json.dumps(data).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "loratui"})
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        log.warning("notify.webhook answered HTTP %d: %s", exc.code, url)
        return False, f"webhook answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        log.warning("notify.webhook unreachable: %s (%s)", url, reason)
        return False, f"webhook unreachable ({reason})"
    log.info("notify.webhook answered HTTP %d", code)
    return True, f"webhook answered {code}"
