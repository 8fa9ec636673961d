"""Run ``flwr run .`` (simulation) from Python with a private FLWR_HOME, then clean up.

``flwr run`` starts a local SuperLink and SuperExec that outlive the command and
whose working directory decides where relative paths land. Scripts, benchmarks
and tests use :func:`flwr_run` so each run gets its own FLWR_HOME, an absolute
log directory, and its daemons stopped by PID afterwards.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fedvq_app.config import ConfigError

PROJECT_DIR = Path(__file__).resolve().parent.parent
DAEMONS = ("flower-superlink", "flower-superexec", "flwr-simulation")
SUPERLINK_SLOW = "Failed to start local SuperLink"


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


def declared_keys() -> dict:
    """The run-config keys pyproject.toml declares (every option, when installed without it)."""
    from fedvq_app.local_grid import full_run_config  # noqa: PLC0415

    return full_run_config()


def check_run_config_keys(keys, source: str = "--run-config") -> None:
    """Unknown or repeated keys, named with the closest declared key (Flower only says 'Invalid run configuration')."""
    keys = list(keys)
    known = declared_keys()
    repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
    if repeated:
        raise ConfigError(f"{source}: key {repeated[0]!r} is given more than once; give each key once")
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; see [tool.flwr.app.config] in pyproject.toml"
            raise ConfigError(f"{source}: unknown config key {key!r}{hint}")


def override_keys(text: str) -> list[str]:
    """The keys of a ``k1=v1 k2='v 2'`` override string, in order and with repeats."""
    return re.findall(r"(?:^|\s)([A-Za-z0-9_.\-]+)\s*=", text)


def parse_overrides(overrides: list[str], source: str = "overrides") -> dict:
    """``key=value`` overrides of a script, checked against pyproject (unknown / repeated keys)."""
    from flwr.common.config import parse_config_args  # noqa: PLC0415

    check_run_config_keys([k for text in overrides for k in override_keys(text)], source)
    try:
        # one string: Flower's parser merges separate strings with a shallow dict update, so a second
        # `fusedspace.x=...` string would drop the first `fusedspace.*` key
        return parse_config_args([" ".join(overrides)])
    except Exception as err:  # noqa: BLE001 - Flower's parser raises several types for a bad value
        raise ConfigError(f"{source}: cannot parse {' '.join(overrides)!r} ({err})") from None


@dataclass(frozen=True)
class FlwrRun:
    """Outcome of one ``flwr run``: its exit code (0 for any run that started), and the run's status."""

    returncode: int
    wall_s: float
    output: str
    run_id: int | None = None
    #: Flower's status of the run, e.g. ``finished:completed`` or ``finished:failed`` (None if unknown)
    status: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.status == "finished:completed"

    @property
    def failure(self) -> str:
        """The run's one-line reason (``[fedvq] run failed: ...``), else what Flower reported."""
        for line in self.output.splitlines():
            if "[fedvq] run failed: " in line:
                return line.split("[fedvq] run failed: ", 1)[1].strip()
        return f"flwr run exited {self.returncode}, run status {self.status}: {self.output.strip()[-300:]}"

    def raise_for_status(self) -> FlwrRun:
        """:class:`~fedvq_app.errors.RunFailed` unless the run finished as completed."""
        from fedvq_app.errors import RunFailed  # noqa: PLC0415

        if not self.ok:
            raise RunFailed(self.failure)
        return self


def run_status(env: dict, run_id: int, timeout: float = 60) -> str | None:
    """``flwr ls --run-id`` of the local SuperLink: ``<status>:<sub-status>`` once the run is finished."""
    deadline = time.time() + timeout
    status = None
    while time.time() < deadline:
        done = subprocess.run(
            ["flwr", "ls", "--run-id", str(run_id), "--format", "json"],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        try:
            runs = json.loads(done.stdout).get("runs", [])
        except json.JSONDecodeError:
            runs = []
        if runs:
            status = str(runs[0].get("status", ""))
            if status.startswith("finished"):
                return status
        time.sleep(1.0)
    return status


def run_id_of(output: str) -> int | None:
    found = re.search(r"(?:run|Run)\D{0,20}?(\d{6,})", output)
    return int(found.group(1)) if found else None


def flwr_run(
    run_config: dict,
    flwr_home: Path,
    federation_config: str = "num-supernodes=2 client-resources-num-cpus=1",
    timeout: float = 900,
    keep_daemons: bool = False,
    superlink_env: dict[str, str] | None = None,
) -> FlwrRun:
    """``flwr run . --stream`` in the project directory; the run's status read back; daemons stopped afterwards.

    Unknown or repeated run-config keys are refused here with the key's name
    (:class:`ConfigError`) before anything starts. ``superlink_env`` (from
    :func:`private_superlink_env`) with ``keep_daemons=True`` lets several runs
    share one local SuperLink.
    """
    check_run_config_keys(run_config)
    env = {**os.environ, **(superlink_env or private_superlink_env(flwr_home))}
    cmd = ["flwr", "run", ".", "--stream", "--federation-config", federation_config]
    cmd += ["--run-config", run_config_arg(run_config)]
    started = time.time()
    try:
        for attempt in range(2):
            done = subprocess.run(cmd, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout)
            output = done.stdout + done.stderr
            # Flower gives its local SuperLink 15 s to start; a busy machine can miss that once
            if done.returncode == 0 or SUPERLINK_SLOW not in output or attempt:
                break
            stop_daemons(flwr_home)
        wall = time.time() - started
        run_id = run_id_of(output)
        status = run_status(env, run_id) if run_id is not None and done.returncode == 0 else None
        return FlwrRun(done.returncode, wall, output, run_id, status)
    finally:
        if not keep_daemons:
            stop_daemons(flwr_home)
