"""Run ``flwr run .`` (simulation) from Python with a private FLWR_HOME, then clean up.

``flwr run`` starts a local SuperLink and SuperExec that outlive the command and
whose working directory decides where relative paths land. Scripts, benchmarks
and tests use :func:`flwr_run` so each run gets its own FLWR_HOME and ports, an
absolute log directory, and its daemons stopped afterwards. It speaks to Flower
through its CLI's JSON interface (``flwr run/ls --format json``, ``flwr log``)
and finds the daemons of its FLWR_HOME with psutil.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil

from fedvq_app.config import ConfigError
from fedvq_app.local_grid import full_run_config

PROJECT_DIR = Path(__file__).resolve().parent.parent
DAEMONS = ("flower-superlink", "flower-superexec", "flwr-simulation")
#: how Flower reports a run that ``flwr run --stream`` started, and the details of a failed ServerApp
STARTED = "Successfully started run "
FAILED_PREFIX = "ServerApp failed with exception: "


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
    """PIDs of the Flower daemons (local SuperLink, SuperExec, simulation) started with this FLWR_HOME."""
    wanted = str(flwr_home)
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if (
                any(d in " ".join(proc.info["cmdline"] or ()) for d in DAEMONS)
                and proc.environ().get("FLWR_HOME") == wanted
            ):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


def stop_daemons(flwr_home: Path, grace_s: float = 3.0) -> None:
    """Terminate every daemon of ``flwr_home``; kill what is still there after ``grace_s``."""
    procs = []
    for pid in daemons_of(flwr_home):
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def declared_keys() -> dict:
    """The run-config keys pyproject.toml declares (every option, when installed without it)."""
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
    from flwr.common.config import parse_config_args  # noqa: PLC0415 - start-up cost: Flower's config parser, only on this path

    check_run_config_keys([k for text in overrides for k in override_keys(text)], source)
    try:
        # one string: Flower's parser merges separate strings with a shallow dict update, so a second
        # `fusedspace.x=...` string would drop the first `fusedspace.*` key
        return parse_config_args([" ".join(overrides)])
    except Exception as err:  # noqa: BLE001 - Flower's parser raises several types for a bad value
        raise ConfigError(f"{source}: cannot parse {' '.join(overrides)!r} ({err})") from None


@dataclass(frozen=True)
class FlwrRun:
    """Outcome of one ``flwr run``: its exit code (0 for any run that started), the run's log and status."""

    returncode: int
    wall_s: float
    output: str
    run_id: int | None = None
    #: Flower's status of the run, e.g. ``finished:completed`` or ``finished:failed`` (None if unknown)
    status: str | None = None
    #: Flower's ``status-details`` of the run (the ServerApp's exception for a failed run)
    details: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.status == "finished:completed"

    @property
    def failure(self) -> str:
        """The run's one-line reason: Flower's status details (the ServerApp's RunFailed), else the log's line."""
        if self.details.startswith(FAILED_PREFIX):
            return self.details[len(FAILED_PREFIX) :].strip()
        for line in self.output.splitlines():
            if "[fedvq] run failed: " in line:
                return line.split("[fedvq] run failed: ", 1)[1].strip()
        return f"flwr run exited {self.returncode}, run status {self.status}: {self.output.strip()[-300:]}"

    def raise_for_status(self) -> FlwrRun:
        """:class:`~fedvq_app.errors.RunFailed` unless the run finished as completed."""
        from fedvq_app.errors import RunFailed  # noqa: PLC0415 - flwr's logger, only when a caller asks

        if not self.ok:
            raise RunFailed(self.failure)
        return self


def _flwr_json(args: list[str], env: dict, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    """A ``flwr`` command with ``--format json``: the process and its JSON reply ({} if none)."""
    done = subprocess.run(
        ["flwr", *args, "--format", "json"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout
    )
    try:
        reply = json.loads(done.stdout)
    except json.JSONDecodeError:
        reply = {}
    return done, reply if isinstance(reply, dict) else {}


def run_info(env: dict, run_id: int, timeout: float = 60) -> dict:
    """``flwr ls --run-id`` of the local SuperLink, polled until the run is finished (or ``timeout``)."""
    deadline = time.time() + timeout
    info: dict = {}
    while time.time() < deadline:
        _, reply = _flwr_json(["ls", "--run-id", str(run_id)], env, timeout=60)
        runs = reply.get("runs") or []
        if runs:
            info = runs[0]
            if str(info.get("status", "")).startswith("finished"):
                return info
        time.sleep(1.0)
    return info


def run_status(env: dict, run_id: int, timeout: float = 60) -> str | None:
    """The run's ``<status>:<sub-status>`` once it is finished (None if Flower does not know it)."""
    return run_info(env, run_id, timeout).get("status")


def run_id_of(output: str) -> int | None:
    """The run id in the output of ``flwr run --stream`` (``Successfully started run <id>``), for deployments
    driven with ``--stream``; :func:`flwr_run` takes it from ``--format json`` instead."""
    for line in output.splitlines():
        if STARTED in line:
            return int(line.split(STARTED, 1)[1].split()[0])
    return None


def flwr_run(
    run_config: dict,
    flwr_home: Path,
    federation_config: str = "num-supernodes=2 client-resources-num-cpus=1",
    timeout: float = 900,
    keep_daemons: bool = False,
    superlink_env: dict[str, str] | None = None,
) -> FlwrRun:
    """One ``flwr run .`` through Flower's own interfaces, daemons stopped afterwards.

    ``flwr run --format json`` submits the run and returns its id; ``flwr log <id> --stream``
    follows its log until it ends; ``flwr ls --run-id <id> --format json`` gives its status and
    details. Unknown or repeated run-config keys are refused here with the key's name
    (:class:`ConfigError`) before anything starts. ``superlink_env`` (from
    :func:`private_superlink_env`) with ``keep_daemons=True`` lets several runs share one local
    SuperLink. A submission that starts no run is tried once more after the local SuperLink of
    ``flwr_home`` is stopped (Flower gives a local SuperLink 15 s to start; a busy machine can
    miss that once).
    """
    check_run_config_keys(run_config)
    env = {**os.environ, **(superlink_env or private_superlink_env(flwr_home))}
    submit = ["run", ".", "--federation-config", federation_config, "--run-config", run_config_arg(run_config)]
    started = time.time()
    try:
        for attempt in range(2):
            done, reply = _flwr_json(submit, env, timeout)
            if reply.get("success") or attempt:
                break
            stop_daemons(flwr_home)
        if not reply.get("success"):
            message = reply.get("error-message") or (done.stdout + done.stderr).strip()[-500:]
            return FlwrRun(done.returncode or 1, time.time() - started, message)
        run_id = int(reply["run-id"])
        left = max(timeout - (time.time() - started), 1.0)
        log = subprocess.run(
            ["flwr", "log", str(run_id), "--stream"],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=left,
        )
        info = run_info(env, run_id)
        return FlwrRun(
            0,
            time.time() - started,
            log.stdout + log.stderr,
            run_id,
            info.get("status"),
            str(info.get("status-details", "")),
        )
    finally:
        if not keep_daemons:
            stop_daemons(flwr_home)
