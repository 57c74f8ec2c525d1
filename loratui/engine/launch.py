"""Starting several training processes as one run, so nobody has to write a launch command.

``train.num_processes`` (0: every visible GPU) decides how many. ``loratui train --headless`` and the
dashboard's training process call :func:`launch` when more than one is wanted and they were not already
started by a launcher; the processes it starts are ordinary ranks (see ``distributed.py``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from loratui.engine.distributed import use_cpu


def planned_processes(requested: int) -> int:
    """How many processes a run trains with: ``train.num_processes``, where 0 means every visible GPU
    (one process without a GPU)."""
    import torch

    from loratui.config import ConfigError

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == 0:
        return max(1, gpus)
    if gpus and requested > gpus:
        raise ConfigError(f"train.num_processes = {requested}, but only {gpus} GPU(s) are visible "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Use at most "
                          f"{gpus}, or 0 for all of them.")
    return requested


def processes_to_start(cfg: Any) -> int:
    """``train.num_processes`` resolved; an explicit 1 answers without importing torch."""
    if cfg.train.num_processes == 1:
        return 1
    return planned_processes(cfg.train.num_processes)


def launch_command(processes: int, args: list[str], *, cpu: bool, module: str = "loratui") -> list[str]:
    """The command that starts ``processes`` copies of ``python -m <module> <args>`` as one run."""
    if cpu:
        # accelerate's launcher starts a single process for --cpu; torchrun starts them all, and
        # ACCELERATE_USE_CPU (set by launch()) makes accelerate join them over gloo.
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                "-m", module, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", module, *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(processes: int, args: list[str], *, echo: Callable[[str], None], module: str = "loratui") -> int:
    """Run ``python -m <module> <args>`` as ``processes`` processes and wait for them; their exit code.

    The launched processes stay in this terminal's process group, so Ctrl+C reaches them as it would a
    single run (rank 0 decides, and the launcher's repeat of the same signal is ignored). The launcher
    gives them 10 minutes, not its default 30 seconds, to save the checkpoint and the LoRA before it
    kills them.
    """
    cpu = use_cpu()
    cmd = launch_command(processes, args, cpu=cpu, module=module)
    env = dict(os.environ)
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600")
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    package_root = str(Path(__file__).resolve().parents[2])  # this very loratui, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    echo(f"starting {processes} processes ({'CPU, gloo' if cpu else 'GPUs, NCCL'}): {' '.join(cmd[1:])}")
    child = subprocess.Popen(cmd, env=env)
    # Ctrl+C reaches the processes directly; a SIGTERM sent to this one only is passed on to the launcher.
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
