#!/usr/bin/env python
"""A deployment across hosts on one machine: every host in its own network namespace.

``python scripts/local_topology.py up --netns ...`` uses it. Where
:class:`local_topology.LocalTopology` puts every process on 127.0.0.1, this one
models separate machines on a LAN:

* one namespace per host: ``<prefix>-link`` (the SuperLink, its ServerApp executor
  and the operator's ``flwr`` CLI) and ``<prefix>-site<i>`` per SuperNode (with the
  ClientApps it starts), each with its own loopback;
* a bridge ``br0`` in the SuperLink's namespace holding the address
  ``10.231.0.1/24``; each site's ``eth0`` (``10.231.0.<10+i>/24``) is one end of a
  veth pair whose other end, ``site<i>``, is a port of that bridge. Nothing is added
  to the root namespace, so two topologies (or the host's own networks) never see
  each other, and traffic only ever goes to these namespace addresses;
* the SuperLink listens on ``10.231.0.1`` (not on 0.0.0.0); SuperNodes dial that
  address; ``--secure`` issues the SuperLink's certificate with that IP in its
  subjectAltName and registers each site's key (SuperNode authentication);
* ``--uplink-mbit N``: a ``tbf`` queue on every site's ``eth0`` (its uplink);
  :meth:`NetnsTopology.shape_downlink` shapes the other direction (the bridge port);
* faults for tests: :meth:`NetnsTopology.link_down` / ``link_up`` (the bridge port
  of a site goes down: its TCP connections stall, nothing is reset),
  ``kill_supernode`` / ``restart_supernode``, ``kill_superlink`` /
  ``restart_superlink``.

Every process runs via ``ip netns exec <namespace>`` and carries the topology's
marker; teardown stops them by PID (SuperNodes first), then SIGKILLs whatever
process is still inside one of the topology's namespaces (``ip netns pids``), then
deletes the namespaces, which removes every veth and the bridge with them. It runs
on ``down``, on failure, on Ctrl-C (SIGINT/SIGTERM) and at interpreter exit. Needs
root and ``ip`` (iproute2); ``tc`` for shaping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

if "local_topology" not in sys.modules:  # run as a script, or imported by local_topology's CLI
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import local_topology  # noqa: E402
from local_topology import LocalTopology, TopologyState  # noqa: E402

#: the private test subnet inside the topology's namespaces (never routed to or from the root namespace)
SUBNET = "10.231.0"
SUPERLINK_IP = f"{SUBNET}.1"
#: every host has its own network stack, so fixed ports cannot collide
SUPERLINK_PORT = 9092
SUPERNODE_PORT = 9094
NAMESPACE_PREFIX = "fvq"


def site_ip(index: int) -> str:
    return f"{SUBNET}.{10 + index}"


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces and veth pairs needs root"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"{NAMESPACE_PREFIX}probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"'ip netns add' fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def namespace_pids(namespace: str) -> list[int]:
    done = _ip("netns", "pids", namespace, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def remove_namespaces(namespaces: list[str]) -> None:
    """SIGKILL whatever still runs inside the namespaces (all started by the topology), then delete them."""
    existing = set(_ip("netns", "list", check=False).stdout.split())
    for namespace in namespaces:
        if namespace not in existing:
            continue
        for _ in range(20):
            pids = namespace_pids(namespace)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        _ip("netns", "del", namespace, check=False)


def tbf_burst_bytes(mbit: float) -> int:
    """A burst that lets tbf reach its rate at the kernel's timer resolution (>= 1 full-size packet)."""
    return max(16_000, int(mbit * 1e6 / 8 / 100))


class NetnsTopology(LocalTopology):
    """A SuperLink host and one host per SuperNode, each in its own network namespace."""

    def __init__(self, *args, uplink_mbit: float | None = None, database: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.uplink_mbit = uplink_mbit
        #: keep the SuperLink's state (registered keys, nodes, runs) in a file: survives a restart
        self.database = database
        self._hosts: dict[str, str] = {}  # process name -> namespace
        self._site_count = 0

    # ------------------------------------------------------------------ names and addresses
    @property
    def prefix(self) -> str:
        return f"{NAMESPACE_PREFIX}{self.state.marker[:8]}"

    @property
    def link_namespace(self) -> str:
        return f"{self.prefix}-link"

    def site_namespace(self, index: int) -> str:
        return f"{self.prefix}-site{index}"

    @property
    def superlink_address(self) -> str:
        return f"{SUPERLINK_IP}:{SUPERLINK_PORT}"

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        # `ip netns exec` execs by PATH: the Flower CLIs of this interpreter's environment come first
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def in_namespace(self, namespace: str, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *command]

    # ------------------------------------------------------------------ commands
    def superlink_command(self) -> list[str]:
        command = super().superlink_command()
        command[command.index("--host") + 1] = SUPERLINK_IP
        command[command.index("--port") + 1] = str(SUPERLINK_PORT)
        if self.database:
            command += ["--database", str(self.dir / "superlink-state.db")]
        return command

    def supernode_command(self, index: int, key: str | None = None, partition: int | None = None) -> list[str]:
        """Site ``index``'s SuperNode (partition ``partition``, default ``index``); ``key=""``: no key at all."""
        partition = index if partition is None else partition
        command = super().supernode_command(min(partition, self.num_supernodes - 1))
        command[command.index("--superlink") + 1] = self.superlink_address
        command[command.index("--port") + 1] = str(SUPERNODE_PORT)
        command[command.index("--node-config") + 1] = self.node_config(partition)
        if key is not None and "--auth-supernode-private-key" in command:
            at = command.index("--auth-supernode-private-key")
            if key:
                command[at + 1] = key
            else:  # no key at all
                del command[at : at + 2]
        return command

    def connection_toml(self) -> str:
        return super().connection_toml().replace(f"127.0.0.1:{self.state.superlink_port}", self.superlink_address)

    def flwr(self, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
        """The operator's ``flwr`` CLI, on the SuperLink's host."""
        return subprocess.run(
            self.in_namespace(self.link_namespace, ["flwr", *args]),
            cwd=local_topology.ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    def _spawn(self, name: str, command: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        namespace = self._hosts.get(name, self.link_namespace)
        return super()._spawn(name, self.in_namespace(namespace, command), extra_env)

    # ------------------------------------------------------------------ network
    def _make_link(self) -> None:
        namespace = self.link_namespace
        self._add_namespace(namespace)
        _ip("-n", namespace, "link", "add", "br0", "type", "bridge")
        _ip("-n", namespace, "addr", "add", f"{SUPERLINK_IP}/24", "dev", "br0")
        _ip("-n", namespace, "link", "set", "br0", "up")

    def _add_namespace(self, namespace: str) -> None:
        self.state.namespaces.append(namespace)
        self._save_state()  # recorded before it exists: `down` removes it even if we die now
        _ip("netns", "add", namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def add_site(self) -> tuple[int, str]:
        """A new host on the LAN: its namespace, a veth to the bridge, its address. Returns (index, namespace)."""
        index = self._site_count
        self._site_count += 1
        namespace = self.site_namespace(index)
        self._add_namespace(namespace)
        port = f"site{index}"
        _ip("-n", self.link_namespace, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("-n", self.link_namespace, "link", "set", port, "master", "br0")
        _ip("-n", self.link_namespace, "link", "set", port, "up")
        _ip("-n", namespace, "addr", "add", f"{site_ip(index)}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        if self.uplink_mbit:
            self.shape_uplink(index, self.uplink_mbit)
        return index, namespace

    def shape_uplink(self, index: int, mbit: float) -> None:
        """tbf on the site's eth0: what it sends towards the SuperLink leaves at ``mbit`` Mbit/s."""
        burst = tbf_burst_bytes(mbit)
        command = ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", f"{mbit}mbit"]
        command += ["burst", str(burst), "latency", "400ms"]
        done = subprocess.run(self.in_namespace(self.site_namespace(index), command), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"shaping site {index}'s uplink failed: {done.stderr.strip()}")

    def shape_downlink(self, index: int, mbit: float) -> None:
        """tbf on the bridge port ``site<i>``: what the SuperLink sends to the site arrives at ``mbit`` Mbit/s."""
        burst = tbf_burst_bytes(mbit)
        command = ["tc", "qdisc", "replace", "dev", f"site{index}", "root", "tbf", "rate", f"{mbit}mbit"]
        command += ["burst", str(burst), "latency", "400ms"]
        done = subprocess.run(self.in_namespace(self.link_namespace, command), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"shaping site {index}'s downlink failed: {done.stderr.strip()}")

    def unshape(self, index: int) -> None:
        """Both directions of the site's link back to the kernel's default queue (no rate limit)."""
        for namespace, device in ((self.site_namespace(index), "eth0"), (self.link_namespace, f"site{index}")):
            subprocess.run(
                self.in_namespace(namespace, ["tc", "qdisc", "del", "dev", device, "root"]), capture_output=True
            )

    def qdisc(self, index: int) -> str:
        done = subprocess.run(
            self.in_namespace(self.site_namespace(index), ["tc", "qdisc", "show", "dev", "eth0"]),
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def link_down(self, index: int) -> None:
        """The site's cable is pulled: its bridge port goes down (no reset, packets just stop)."""
        _ip("-n", self.link_namespace, "link", "set", f"site{index}", "down")

    def link_up(self, index: int) -> None:
        _ip("-n", self.link_namespace, "link", "set", f"site{index}", "up")

    def tcp_reachable(self, namespace: str, address: str, timeout: float = 3.0) -> bool:
        host, port = address.rsplit(":", 1)
        probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout={timeout}).close()"
        done = subprocess.run(self.in_namespace(namespace, [sys.executable, "-c", probe]), capture_output=True)
        return done.returncode == 0

    # ------------------------------------------------------------------ lifecycle
    def up(self, timeout: float = 180.0) -> NetnsTopology:
        problem = netns_unavailable()
        if problem is not None:
            raise RuntimeError(problem)
        previous = self.dir / "topology.json"
        if previous.is_file():
            old = local_topology.load_state(self.dir)
            if local_topology.marked_pids(old.marker) or _live(old.namespaces):
                raise RuntimeError(
                    f"a topology is already running in {self.dir}: stop it first (down --dir {self.dir})"
                )
        for folder in (self.flwr_home, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.state = TopologyState(
            marker=uuid.uuid4().hex,
            directory=str(self.dir),
            connection=self.connection,
            secure=self.secure,
            superlink_port=SUPERLINK_PORT,
            supernode_ports=[SUPERNODE_PORT] * self.num_supernodes,
            namespaces=[],
        )
        local_topology.register_cleanup(self.down)
        self._make_link()
        for _ in range(self.num_supernodes):
            self.add_site()
        if self.secure:
            self._make_certificates()
        (self.flwr_home / "config.toml").write_text(self.connection_toml())
        self._spawn("superlink", self.superlink_command())
        self._save_state()
        self._wait_for_superlink(timeout)
        if self.secure:
            self._register_supernodes()
        for index in range(self.num_supernodes):
            self.start_supernode(index)
        self._save_state()
        self.wait_for_nodes(self.num_supernodes, timeout)
        return self

    def _make_certificates(self) -> None:
        """The SuperLink's certificate names the address the sites dial (subjectAltName IP:10.231.0.1)."""
        if not (self.certs / "ca.crt").is_file():
            subprocess.run(
                ["bash", str(local_topology.GEN_CERTS), str(self.certs), str(self.num_supernodes)],
                check=True,
                capture_output=True,
                env={**self.env, "EXTRA_SANS": f"IP:{SUPERLINK_IP}"},
            )

    def start_supernode(
        self,
        index: int,
        name: str | None = None,
        key: str | None = None,
        extra: tuple = (),
        partition: int | None = None,
    ) -> subprocess.Popen:
        """A SuperNode on site ``index``'s host (``name`` defaults to ``supernode-<index>``)."""
        name = name or f"supernode-{index}"
        self._hosts[name] = self.site_namespace(index)
        return self._spawn(name, [*self.supernode_command(index, key, partition), *extra])

    def _wait_for_superlink(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_alive("superlink")
            if self.tcp_reachable(self.link_namespace, self.superlink_address):
                return
            time.sleep(0.5)
        raise TimeoutError(f"the SuperLink did not open {self.superlink_address} within {timeout:.0f} s")

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink with its ServerApp executor and ServerApp (its process group): a host crash."""
        os.killpg(self.state.pids["superlink"], signal.SIGKILL)
        self._processes["superlink"].wait(timeout=30)
        deadline = time.time() + 30  # the executor it started shares its group, gone with it
        while time.time() < deadline and _group_alive(self.state.pids["superlink"]):
            time.sleep(0.2)

    def restart_superlink(self, timeout: float = 180.0) -> None:
        self._spawn("superlink", self.superlink_command())
        self._save_state()
        self._wait_for_superlink(timeout)

    def restart_supernode(self, index: int, timeout: float = 300.0, retry_s: float = 5.0) -> dict:
        """The same site comes back (same host, node config and key), restarted like a supervisor would.

        Flower 1.41 refuses to activate a node whose previous session the SuperLink still
        counts as online (exit code 305, "[code: 2004] Failed to activate SuperNode") until
        that session's heartbeat lapses (2 x 30 s); like ``Restart=on-failure`` it is started
        again every ``retry_s`` seconds until it activates. Returns the attempts, the refusals
        and the node id it activated as (``SuperNode ID: <id>`` in its log).
        """
        name = f"supernode-{index}"
        self._processes[name].wait(timeout=30)
        log = self.logs / f"{name}.log"
        deadline, attempts, refused = time.time() + timeout, 0, 0
        while True:
            offset = log.stat().st_size if log.is_file() else 0
            attempts += 1
            process = self.start_supernode(index)
            while True:
                text = log.read_text(errors="replace")[offset:] if log.is_file() else ""
                if "SuperNode ID:" in text:
                    node_id = int(text.split("SuperNode ID:", 1)[1].split()[0])
                    return {"attempts": attempts, "refused": refused, "node_id": node_id}
                if process.poll() is not None or time.time() > deadline:
                    break
                time.sleep(0.5)
            if process.poll() is None:
                raise TimeoutError(f"{name} did not activate within {timeout:.0f} s; see {log}")
            refused += "Failed to activate SuperNode" in text
            if time.time() > deadline:
                raise TimeoutError(f"{name} was refused {refused} times in {timeout:.0f} s; see {log}")
            time.sleep(retry_s)

    def node_id_of(self, name: str) -> int | None:
        """The node id a SuperNode last activated as (its log's last ``SuperNode ID:``)."""
        log = self.logs / f"{name}.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        return int(text.rsplit("SuperNode ID:", 1)[1].split()[0]) if "SuperNode ID:" in text else None

    def down(self, grace_s: float = 10.0) -> None:
        super().down(grace_s)
        if self.state is not None:
            remove_namespaces(self.state.namespaces)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _live(namespaces: list[str]) -> bool:
    existing = set(_ip("netns", "list", check=False).stdout.split())
    return any(n in existing for n in namespaces)


def describe(topology: NetnsTopology) -> str:
    hosts = [f"SuperLink {topology.superlink_address} in {topology.link_namespace}"]
    hosts += [f"site {i} {site_ip(i)} in {topology.site_namespace(i)}" for i in range(topology.num_supernodes)]
    shaping = f", uplinks shaped to {topology.uplink_mbit:g} Mbit/s (tbf)" if topology.uplink_mbit else ""
    return "; ".join(hosts) + shaping


def status(topology: NetnsTopology) -> dict:
    """What is up, for scripts: namespaces, addresses, qdiscs."""
    return {
        "namespaces": list(topology.state.namespaces),
        "superlink": topology.superlink_address,
        "sites": {i: site_ip(i) for i in range(topology.num_supernodes)},
        "qdiscs": {i: topology.qdisc(i) for i in range(topology.num_supernodes)},
    }


if __name__ == "__main__":
    print(json.dumps({"unavailable": netns_unavailable()}))
