#!/usr/bin/env python
"""Bring a real Flower deployment up and down on 127.0.0.1: one SuperLink, N SuperNodes.

The same processes a multi-machine deployment runs, on one machine and without
Docker: ``flower-superlink`` and ``flower-supernode --node-config "partition-id=i
num-partitions=N"`` (plus ``data-dir`` when given), then ``flwr run . <connection>``
against them. Ports are picked free at start-up; everything (FLWR_HOME with the
connection in config.toml, logs, certificates, PIDs) lives in one state folder.

    python scripts/local_topology.py up --supernodes 3              # development only: no TLS
    python scripts/local_topology.py up --supernodes 3 --secure     # TLS + SuperNode authentication
    FLWR_HOME=<state>/flwr_home flwr run . fedvq-local --stream --run-config conf/x.toml
    python scripts/local_topology.py run --supernodes 2 -- num-server-rounds=2 method=fedavg
    python scripts/local_topology.py kill-supernode 1               # a fault, for trying things out
    python scripts/local_topology.py down
    sudo python scripts/local_topology.py up --netns --secure --uplink-mbit 10   # one network namespace per host

``--netns`` (scripts/netns_topology.py) puts the SuperLink and every SuperNode on
its own host: a network namespace each, joined by veth pairs on a private subnet,
with TLS on the SuperLink's real address and tbf-shaped uplinks.

Every process started carries ``FEDVQ_TOPOLOGY_ID=<id>`` in its environment;
``down`` stops exactly those (SuperNodes first, then the SuperLink and the executors
they spawned), by PID, and nothing else. Runtime dependency installation is off:
the app's dependencies must already be installed (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEN_CERTS = ROOT / "scripts" / "gen_certs.sh"
CONNECTION = "fedvq-local"
MARKER = "FEDVQ_TOPOLOGY_ID"
#: ports other tools on this machine use by default (flwr run's local SuperLink, Flower defaults)
RESERVED_PORTS = frozenset({8000, 9091, 9092, 9093, 9094, 39091, 39092, 39093, 39094, 39095})


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies (Linux), so that a
    test runner killed mid-run leaves no daemons; they shut their own children down on SIGTERM."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def default_state_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"fedvq-topology-{os.getuid()}"


def free_port(taken: set[int]) -> int:
    """A port nothing listens on now (and none of the reserved ones)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS and port not in taken:
            taken.add(port)
            return port


def toml_value(value) -> str:
    """A run-config value as TOML (bool, number or basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


@dataclass
class TopologyState:
    """What ``down`` and ``kill-supernode`` need to find the processes again (topology.json)."""

    marker: str
    directory: str
    connection: str
    secure: bool
    superlink_port: int
    supernode_ports: list[int]
    pids: dict[str, int] = field(default_factory=dict)
    #: network namespaces of a ``--netns`` topology (scripts/netns_topology.py), removed by ``down``
    namespaces: list[str] = field(default_factory=list)


class LocalTopology:
    """A SuperLink and ``num_supernodes`` SuperNodes as local processes."""

    def __init__(
        self,
        num_supernodes: int = 2,
        secure: bool = False,
        directory: Path | None = None,
        data_dir: str = "",
        gpus: tuple[str, ...] = (),
        connection: str = CONNECTION,
        bind_to_parent: bool = True,
    ) -> None:
        self.num_supernodes = num_supernodes
        self.secure = secure
        self.dir = Path(directory or default_state_dir()).resolve()
        self.data_dir = data_dir
        self.gpus = tuple(gpus)
        self.connection = connection
        #: stop every process when this Python process dies (``up`` from the CLI turns it off)
        self.bind_to_parent = bind_to_parent
        self.flwr_home = self.dir / "flwr_home"
        self.logs = self.dir / "logs"
        self.certs = self.dir / "certificates"
        self.state: TopologyState | None = None
        self._processes: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ environment
    @property
    def env(self) -> dict[str, str]:
        """Environment of every process: private FLWR_HOME, no runtime `uv sync`, the marker."""
        env = {
            **os.environ,
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
        }
        if self.state is not None:
            env[MARKER] = self.state.marker
        return env

    def _spawn(self, name: str, command: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a process of the topology. Call it from the thread that lives as long as the topology (the
        main thread): the parent-death signal is sent when the *thread* that started the child ends."""
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a SuperNode dies with its executor and ClientApps
            preexec_fn=_die_with_parent if self.bind_to_parent else None,
        )
        log.close()
        self._processes[name] = process
        self.state.pids[name] = process.pid
        return process

    # ------------------------------------------------------------------ commands
    def superlink_command(self) -> list[str]:
        command = [
            "flower-superlink",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.state.superlink_port),
            "--disable-runtime-dependency-installation",
        ]
        if self.secure:
            return command + [
                "--ssl-ca-certfile",
                str(self.certs / "ca.crt"),
                "--ssl-certfile",
                str(self.certs / "server.pem"),
                "--ssl-keyfile",
                str(self.certs / "server.key"),
                "--enable-supernode-auth",
            ]
        return command + ["--insecure"]

    def node_config(self, index: int) -> str:
        config = f"partition-id={index} num-partitions={self.num_supernodes}"
        if self.data_dir:
            config += f" data-dir={json.dumps(self.data_dir.format(i=index))}"
        return config

    def supernode_command(self, index: int) -> list[str]:
        command = [
            "flower-supernode",
            "--superlink",
            f"127.0.0.1:{self.state.superlink_port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.state.supernode_ports[index]),
            "--node-config",
            self.node_config(index),
        ]
        if self.secure:
            return command + [
                "--root-certificates",
                str(self.certs / "ca.crt"),
                "--auth-supernode-private-key",
                str(self.certs / f"supernode-{index + 1}"),
            ]
        return command + ["--insecure"]

    def connection_toml(self) -> str:
        lines = [
            "[superlink]",
            f'default = "{self.connection}"',
            "",
            f"[superlink.{self.connection}]",
            f'address = "127.0.0.1:{self.state.superlink_port}"',
        ]
        if self.secure:
            lines.append(f"root-certificates = {json.dumps(str(self.certs / 'ca.crt'))}")
        else:
            lines.append("insecure = true")
        return "\n".join(lines) + "\n"

    def flwr(self, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
        """The ``flwr`` CLI against this topology's FLWR_HOME."""
        return subprocess.run(
            ["flwr", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs
        )

    # ------------------------------------------------------------------ lifecycle
    def up(self, timeout: float = 180.0) -> LocalTopology:
        """Start everything and wait until all SuperNodes are online."""
        previous = self.dir / "topology.json"
        if previous.is_file() and marked_pids(load_state(self.dir).marker):
            raise RuntimeError(f"a topology is already running in {self.dir}: stop it first (down --dir {self.dir})")
        for folder in (self.flwr_home, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        self.state = TopologyState(
            marker=uuid.uuid4().hex,
            directory=str(self.dir),
            connection=self.connection,
            secure=self.secure,
            superlink_port=free_port(taken),
            supernode_ports=[free_port(taken) for _ in range(self.num_supernodes)],
        )
        register_cleanup(self.down)
        if self.secure:
            self._make_certificates()
        (self.flwr_home / "config.toml").write_text(self.connection_toml())
        self._spawn("superlink", self.superlink_command())
        self._save_state()
        self._wait_for_port(self.state.superlink_port, timeout)
        if self.secure:
            self._register_supernodes()
        for index in range(self.num_supernodes):
            gpu = {"CUDA_VISIBLE_DEVICES": self.gpus[index % len(self.gpus)]} if self.gpus else None
            self._spawn(f"supernode-{index}", self.supernode_command(index), gpu)
        self._save_state()
        self.wait_for_nodes(self.num_supernodes, timeout)
        return self

    def _make_certificates(self) -> None:
        if not (self.certs / "ca.crt").is_file() or not (self.certs / f"supernode-{self.num_supernodes}").is_file():
            subprocess.run(
                ["bash", str(GEN_CERTS), str(self.certs), str(self.num_supernodes)],
                check=True,
                capture_output=True,
                env=self.env,
            )

    def _register_supernodes(self) -> None:
        """With --enable-supernode-auth only registered public keys may connect."""
        for index in range(self.num_supernodes):
            done = self.flwr(
                "supernode",
                "register",
                str(self.certs / f"supernode-{index + 1}.pub"),
                self.connection,
                "--name",
                f"supernode-{index}",
            )
            if done.returncode != 0:
                raise RuntimeError(f"registering supernode-{index} failed:\n{done.stdout}\n{done.stderr}")

    def _wait_for_port(self, port: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_alive("superlink")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"the SuperLink did not open port {port} within {timeout:.0f} s")

    def _check_alive(self, name: str) -> None:
        process = self._processes.get(name)
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}; see {self.logs / (name + '.log')}")

    def online_nodes(self) -> list[dict]:
        """The SuperLink's view of the SuperNodes (``flwr supernode list``)."""
        done = self.flwr("supernode", "list", self.connection, "--format", "json", timeout=120)
        try:
            payload = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError:
            return []
        return [n for n in payload.get("nodes", []) if n.get("status") == "online"]

    def wait_for_nodes(self, count: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for index in range(self.num_supernodes):
                self._check_alive(f"supernode-{index}")
            if len(self.online_nodes()) >= count:
                return
            time.sleep(2)
        raise TimeoutError(f"fewer than {count} SuperNodes came online within {timeout:.0f} s; see {self.logs}")

    def run_command(self, run_config: dict) -> list[str]:
        """``flwr run . <connection>`` with the run config written to a TOML file."""
        config_file = self.dir / f"run-config-{uuid.uuid4().hex[:8]}.toml"
        config_file.write_text("".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in run_config.items()))
        return ["flwr", "run", ".", self.connection, "--stream", "--run-config", str(config_file)]

    def start_run(self, run_config: dict, log_name: str = "flwr-run") -> subprocess.Popen:
        """Submit a run and stream its logs to ``logs/<log_name>.log`` (returns at once)."""
        return self._spawn(log_name, self.run_command(run_config))

    def run(self, run_config: dict, timeout: float = 600.0, log_name: str = "flwr-run") -> int:
        """Submit a run and wait for it to finish; returns ``flwr run``'s exit code."""
        process = self.start_run(run_config, log_name)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise

    def kill_supernode(self, index: int) -> None:
        """SIGKILL a SuperNode with its executor and ClientApps: a site that dies mid-round."""
        os.killpg(self.state.pids[f"supernode-{index}"], signal.SIGKILL)

    def down(self, grace_s: float = 10.0) -> None:
        """Stop every process of this topology (idempotent)."""
        if self.state is None:
            return
        stop(self.state, grace_s)
        for process in self._processes.values():
            try:
                process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self._processes.clear()

    def _save_state(self) -> None:
        (self.dir / "topology.json").write_text(json.dumps(asdict(self.state), indent=2) + "\n")

    def __enter__(self) -> LocalTopology:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc) -> None:
        self.down()


# ---------------------------------------------------------------------------- stopping by marker
def register_cleanup(down) -> None:
    """``down`` at interpreter exit, and SIGTERM turned into a normal exit so that it runs then too
    (Ctrl-C already unwinds as KeyboardInterrupt through ``with topology:``)."""
    import threading  # noqa: PLC0415

    atexit.register(down)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def marked_pids(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries this topology's marker."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop(state: TopologyState, grace_s: float = 10.0) -> None:
    """SuperNodes first (they deregister), then the SuperLink and whatever else carries the marker."""
    supernodes = [pid for name, pid in state.pids.items() if name.startswith("supernode")]
    _signal([p for p in supernodes if p in marked_pids(state.marker)], signal.SIGTERM)
    deadline = time.time() + grace_s / 2
    while time.time() < deadline and set(supernodes) & set(marked_pids(state.marker)):
        time.sleep(0.2)
    _signal(marked_pids(state.marker), signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and marked_pids(state.marker):
        time.sleep(0.2)
    _signal(marked_pids(state.marker), signal.SIGKILL)
    if state.namespaces:
        netns_module().remove_namespaces(state.namespaces)


def netns_module():
    """scripts/netns_topology.py (the ``--netns`` topology), imported once by its path."""
    if "netns_topology" not in sys.modules:
        import importlib.util  # noqa: PLC0415

        spec = importlib.util.spec_from_file_location("netns_topology", ROOT / "scripts" / "netns_topology.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["netns_topology"] = module
        spec.loader.exec_module(module)
    return sys.modules["netns_topology"]


def load_state(directory: Path) -> TopologyState:
    path = Path(directory) / "topology.json"
    if not path.is_file():
        raise SystemExit(f"no topology.json in {directory}: nothing is running there")
    return TopologyState(**json.loads(path.read_text()))


# ---------------------------------------------------------------------------- CLI
def _parse_run_config(items: list[str]) -> dict:
    """``key=value`` pairs, values parsed as TOML (strings may stay unquoted)."""
    import tomllib

    config = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            config[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            config[key] = raw
    return config


def _topology(args) -> LocalTopology:
    arguments = (args.supernodes, args.secure, args.dir, args.data_dir, tuple(g for g in args.gpus.split(",") if g))
    options = {"connection": args.connection, "bind_to_parent": args.command != "up"}
    if args.netns:
        return netns_module().NetnsTopology(*arguments, uplink_mbit=args.uplink_mbit, **options)
    if args.uplink_mbit:
        raise SystemExit("--uplink-mbit shapes the links between namespaces: it needs --netns")
    return LocalTopology(*arguments, **options)


def _print_usage(topology: LocalTopology) -> None:
    mode = "secure (TLS + SuperNode authentication)" if topology.secure else "INSECURE (development only)"
    where = f"SuperLink 127.0.0.1:{topology.state.superlink_port}"
    run_in = ""
    if topology.state.namespaces:
        where = netns_module().describe(topology)
        run_in = f"ip netns exec {topology.link_namespace} "  # the operator's CLI on the SuperLink's host
    print(f"{mode} topology up: {where}, {topology.num_supernodes} SuperNodes; logs in {topology.logs}")
    print("submit a run with:")
    print(
        f"  {run_in}env FLWR_HOME={shlex.quote(str(topology.flwr_home))} flwr run . {topology.connection} --stream "
        "--run-config 'num-server-rounds=2'"
    )
    print(f"stop it with:\n  python scripts/local_topology.py down --dir {shlex.quote(str(topology.dir))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "run", "down", "kill-supernode"):
        p = sub.add_parser(name)
        p.add_argument("--dir", type=Path, default=default_state_dir(), help="state folder (default: %(default)s)")
        if name in ("up", "run"):
            p.add_argument("--supernodes", type=int, default=3, help="number of SuperNodes (partitions)")
            p.add_argument("--secure", action="store_true", help="TLS and SuperNode authentication")
            p.add_argument("--data-dir", default="", help="per-site data folder, '{i}' = partition id")
            p.add_argument("--gpus", default="", help="comma-separated CUDA devices assigned round-robin")
            p.add_argument("--connection", default=CONNECTION, help="SuperLink connection name in config.toml")
            p.add_argument(
                "--netns",
                action="store_true",
                help="every host in its own network namespace, joined by veth pairs on 10.231.0.0/24 (root)",
            )
            p.add_argument("--uplink-mbit", type=float, default=None, help="--netns: shape each site's uplink (tbf)")
        if name == "run":
            p.add_argument("run_config", nargs="*", help="key=value run-config overrides")
        if name == "kill-supernode":
            p.add_argument("index", type=int)
    args = parser.parse_args(argv)

    if args.command == "down":
        stop(load_state(args.dir))
        print(f"stopped the topology in {args.dir}")
        return 0
    if args.command == "kill-supernode":
        state = load_state(args.dir)
        os.killpg(state.pids[f"supernode-{args.index}"], signal.SIGKILL)
        print(f"killed supernode-{args.index}")
        return 0

    topology = _topology(args)
    if args.command == "up":
        topology.up()
        atexit.unregister(topology.down)  # keep running after this command returns
        _print_usage(topology)
        return 0
    try:
        with topology:
            code = topology.run(_parse_run_config(args.run_config))
            sys.stdout.write((topology.logs / "flwr-run.log").read_text())
            return code
    except KeyboardInterrupt:  # Ctrl-C: `with` has stopped every process (and removed the namespaces)
        print(f"interrupted: the topology in {topology.dir} was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
