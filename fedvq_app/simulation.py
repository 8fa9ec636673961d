"""Run ``flwr run .`` (simulation) from Python with a private FLWR_HOME, then clean up.

``flwr run`` starts a local SuperLink and SuperExec that outlive the command and
whose working directory decides where relative paths land. Scripts, benchmarks
and tests use :func:`flwr_run` so each run gets its own FLWR_HOME, an absolute
log directory, and its daemons stopped by PID afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
DAEMONS = ("flower-superlink", "flower-superexec", "flwr-simulation")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


def run_config_arg(config: dict) -> str:
    """``{"a.b": 1, "c": "x"}`` -> ``a.b=1 c='x'`` for ``--run-config``."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in config.items())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_superlink_env(flwr_home: Path) -> dict[str, str]:
    """Environment for a ``flwr run`` that starts its own local SuperLink.

    Flower 1.41's default local federation talks to whatever SuperLink listens on
    127.0.0.1:39091/39093; a concurrent job (a test, a benchmark) would silently
    join it. Its own FLWR_HOME and free ports keep every job apart.
    """
    return {
        "FLWR_HOME": str(flwr_home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }


def daemons_of(flwr_home: Path) -> list[int]:
    """PIDs of Flower daemons started with this FLWR_HOME."""
    marker = f"FLWR_HOME={flwr_home}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(d in cmd for d in DAEMONS) and marker in env:
            pids.append(int(proc.name))
    return pids


def stop_daemons(flwr_home: Path, grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, every daemon of ``flwr_home``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in daemons_of(flwr_home):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while daemons_of(flwr_home) and time.time() < deadline:
            time.sleep(0.2)


@dataclass(frozen=True)
class FlwrRun:
    """Outcome of one ``flwr run``."""

    returncode: int
    wall_s: float
    output: str


def flwr_run(
    run_config: dict,
    flwr_home: Path,
    federation_config: str = "num-supernodes=2 client-resources-num-cpus=1",
    timeout: float = 900,
    keep_daemons: bool = False,
) -> FlwrRun:
    """``flwr run . --stream`` in the project directory; daemons stopped afterwards."""
    env = {**os.environ, **private_superlink_env(flwr_home)}
    cmd = ["flwr", "run", ".", "--stream", "--federation-config", federation_config]
    cmd += ["--run-config", run_config_arg(run_config)]
    started = time.time()
    try:
        done = subprocess.run(cmd, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout)
        return FlwrRun(done.returncode, time.time() - started, done.stdout + done.stderr)
    finally:
        if not keep_daemons:
            stop_daemons(flwr_home)
