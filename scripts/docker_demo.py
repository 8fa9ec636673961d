#!/usr/bin/env python
"""The Docker Compose demo on a real Docker engine, start to finish, on 127.0.0.1.

    python scripts/docker_demo.py                       # images, 3 jobs, teardown
    python scripts/docker_demo.py --jobs insecure       # only the insecure FedAvg job
    python scripts/docker_demo.py --standins never      # fail instead of building stand-ins

What it does, in order (everything it starts is stopped again, also on failure or Ctrl-C):

1. **Engine.** Uses the Docker daemon that answers; if none does and ``dockerd`` is
   installed (and we are root), starts ``dockerd --bridge=none --iptables=false``
   (no bridge network at all) and stops that one again, by PID, at the end.
2. **Flower images.** ``flwr/superlink``, ``flwr/supernode`` and ``flwr/superexec``
   at the project's Flower version: used when present, pulled when a registry
   answers, otherwise built here as *local stand-ins* under exactly those tags
   (``--standins``): a Debian bookworm minbase rootfs from ``debootstrap`` imported
   as a base image, a venv at ``/python/venv`` with ``flwr==<version>`` from the
   package index, the non-root user ``app`` (uid 49999) with ``HOME=/app`` writable,
   ``WORKDIR /app`` and the upstream entry points. The stand-ins exist only for
   machines without a registry; anywhere else the official images are pulled.
3. **Project image** ``fedvq-superexec:<version>`` from ``docker/Dockerfile``, as it
   is (``docker build --network host``: no bridge is needed).
4. **Sites.** Writes each site's data folder ``docker/data/site-<i>`` (the generated
   k-means file of partition i-1) and makes ``docker/logs`` writable for ``app``.
5. **Host network.** Writes ``docker/compose.hostnet.yml``, an override that puts every
   service on the host network and rewrites the addresses: the SuperLink and every
   SuperNode listen on 127.0.0.1 at free ports, and ``superlink:8000`` /
   ``supernode-<i>:9094`` become those ports (traffic stays on the loopback).
6. **Jobs**, each on a freshly started topology, checked through ``flwr ls`` and
   the experiment folder under ``docker/logs/`` (``summary.json`` and ``rounds.jsonl``):
   ``insecure`` (compose.yml, FedAvg 2 rounds), ``secure`` (+ compose.secure.yml:
   TLS and SuperNode authentication with keys from ``scripts/gen_certs.sh``,
   registered with ``flwr supernode register``) and ``kmeans`` (insecure topology,
   k-means on each site's own file).
7. **Teardown:** ``compose down`` of every topology, the override and the private
   FLWR_HOME removed, dockerd stopped only if this script started it. Images stay
   (``--remove-images`` removes the ones it built).

Figures (seconds per step, image sizes, accuracies) are printed at the end and
written to ``docker/demo/report.json`` (with the containers' logs).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
OVERRIDE = DOCKER / "compose.hostnet.yml"
RESOLVED = DOCKER / ".compose.hostnet.rendered.yml"
#: the demo's own output (report, container logs); docker/logs belongs to the containers' `app` user
DEMO_OUT = DOCKER / "demo"
PROJECT = "fedvq-demo"
APP_UID = 49999  # the `app` user of Flower's images
NUM_SITES = 3
STANDIN_BASE = "fedvq-standin/flwr-base"
STANDIN_ROOTFS = "fedvq-standin/debian"
ENTRYPOINTS = {"superlink": "flower-superlink", "supernode": "flower-supernode", "superexec": "flower-superexec"}
#: FedAvg, 2 rounds, small: what the insecure and the secure job run
FEDAVG = {
    "method": "fedavg",
    "num-server-rounds": 2,
    "train.local-epochs": 1,
    "eval-every": 2,
    "partition.kind": "iid",
    "round-timeout": 420.0,
}
#: k-means, 2 Lloyd rounds on each site's own generated file (as tests/test_deployment.py)
KMEANS = {
    "method": "kmeans",
    "kmeans.data-source": "generated",
    "kmeans.max-rounds": 2,
    "kmeans.n-init": 1,
    "kmeans.client-logs": False,
    "kmeans.silhouette-sample": 0,
}
SITE_ROWS = [60, 80, 100]  # different per site: the summary's row count proves each read its own folder


def flower_version() -> str:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [p for p in pins if p.startswith("flwr[") or p.startswith("flwr==")]
    return pin.split("==", 1)[1]


def log(message: str) -> None:
    print(f"[docker-demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


class DemoError(RuntimeError):
    """A step failed: the message says which and why."""


def sh(
    *args: str,
    check: bool = True,
    capture: bool = False,
    timeout: float | None = None,
    env: dict | None = None,
    cwd: Path | None = None,
    log_file: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run a command; with ``log_file`` its output goes there (appended) instead of the terminal."""
    kwargs: dict = {"cwd": cwd or ROOT, "env": env, "timeout": timeout, "text": True}
    if capture:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    elif log_file is not None:
        handle = log_file.open("a")
        handle.write(f"\n$ {shlex.join(args)}\n")
        handle.flush()
        kwargs.update(stdout=handle, stderr=subprocess.STDOUT)
    try:
        result = subprocess.run(list(args), **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"`{shlex.join(args)}` did not finish within {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        tail = (result.stdout or "")[-3000:] if capture else (log_file.read_text()[-3000:] if log_file else "")
        raise DemoError(f"`{shlex.join(args)}` exited {result.returncode}\n{tail}")
    return result


def free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in ports and not 39090 <= port <= 39100:
            ports.append(port)
    return ports


# ---------------------------------------------------------------------------- engine
class Engine:
    """The Docker daemon: the one that answers, or one started here (and stopped again)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.process: subprocess.Popen | None = None
        self.compose: list[str] = []

    def answers(self) -> bool:
        return subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    def start(self) -> None:
        if shutil.which("docker") is None:
            raise DemoError("no `docker` client on PATH: install Docker (Debian: apt-get install docker.io)")
        if not self.answers():
            dockerd = shutil.which("dockerd")
            if dockerd is None or os.geteuid() != 0:
                raise DemoError("no Docker daemon answers and dockerd cannot be started here (needs dockerd and root)")
            log("no Docker daemon answers: starting dockerd --bridge=none --iptables=false")
            handle = (self.work / "dockerd.log").open("w")
            self.process = subprocess.Popen(
                [dockerd, "--bridge=none", "--iptables=false"],
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            deadline = time.time() + 60
            while not self.answers():
                if self.process.poll() is not None or time.time() > deadline:
                    raise DemoError(f"dockerd did not come up:\n{(self.work / 'dockerd.log').read_text()[-2000:]}")
                time.sleep(1)
            log(f"dockerd started (pid {self.process.pid})")
        # Compose v2 (`docker compose`) where the plugin exists, else docker-compose 1.29
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
            self.compose = ["docker", "compose"]
        elif shutil.which("docker-compose"):
            self.compose = ["docker-compose"]
        else:
            raise DemoError("neither `docker compose` nor `docker-compose` is installed")

    def stop(self) -> None:
        if self.process is None:
            return
        log(f"stopping the dockerd this script started (pid {self.process.pid})")
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


# ---------------------------------------------------------------------------- images
def image_exists(tag: str) -> bool:
    return sh("docker", "image", "inspect", tag, check=False, capture=True).returncode == 0


def image_size(tag: str) -> int:
    return int(sh("docker", "image", "inspect", "--format", "{{.Size}}", tag, capture=True).stdout.strip())


STANDIN_DOCKERFILE = """\
# Local stand-in for Flower's flwr/base image (framework/docker/base/ubuntu/Dockerfile upstream):
# same layout (venv at /python/venv owned by app, user app uid 49999, HOME=/app, WORKDIR /app).
# Built by scripts/docker_demo.py only where flwr/* images cannot be pulled.
FROM {rootfs}
{ca_copy}
RUN python3 -m venv /python/venv \\
    && /python/venv/bin/pip install --no-cache-dir flwr=={version} \\
    && useradd --no-create-home --home-dir /app -c "" --uid {uid} app \\
    && mkdir -p /app && chown -R app:app /app /python/venv
ENV PATH=/python/venv/bin:$PATH \\
    PYTHONUNBUFFERED=1 \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONIOENCODING=UTF-8 \\
    LANG=C.UTF-8 \\
    LC_ALL=C.UTF-8
WORKDIR /app
USER app
ENV HOME=/app
"""


class Images:
    def __init__(self, version: str, work: Path, standins: str, timings: dict, sizes: dict) -> None:
        self.version = version
        self.work = work
        self.standins = standins
        self.timings = timings
        self.sizes = sizes
        self.built: list[str] = []
        self.build_log = work / "build.log"

    def flower_images(self) -> None:
        tags = {kind: f"flwr/{kind}:{self.version}" for kind in ENTRYPOINTS}
        missing = [tag for tag in tags.values() if not image_exists(tag)]
        if missing and self.standins != "always":
            for tag in list(missing):
                log(f"pulling {tag}")
                if sh("docker", "pull", tag, check=False, capture=True, timeout=600).returncode == 0:
                    missing.remove(tag)
                else:
                    log(f"{tag} cannot be pulled (no registry)")
                    break  # the registry does not answer: the others will not come either
        if self.standins == "always":
            missing = list(tags.values())
        if missing:
            if self.standins == "never":
                raise DemoError(f"{', '.join(missing)} not available and --standins never")
            self.build_standins(tags)
        for tag in tags.values():
            self.sizes[tag] = image_size(tag)

    def build_standins(self, tags: dict[str, str]) -> None:
        log(f"building local stand-ins for {', '.join(tags.values())} (no registry here)")
        started = time.time()
        rootfs_tag = f"{STANDIN_ROOTFS}:bookworm-minbase"
        if not image_exists(rootfs_tag):
            if shutil.which("debootstrap") is None:
                raise DemoError("building the stand-in images needs debootstrap (apt-get install debootstrap)")
            rootfs = self.work / "rootfs"
            log("debootstrap --variant=minbase bookworm (python3, python3-venv, ca-certificates)")
            sh(
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip,ca-certificates",
                "bookworm",
                str(rootfs),
                log_file=self.build_log,
            )
            shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
            (rootfs / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                ["docker", "import", "-", rootfs_tag], stdin=tar.stdout, capture_output=True, text=True
            )
            tar.stdout.close()
            if tar.wait() != 0 or imported.returncode != 0:
                raise DemoError(f"docker import of the rootfs failed: {imported.stderr[-2000:]}")
            shutil.rmtree(rootfs)
            self.built.append(rootfs_tag)
        self.timings["standin_rootfs_s"] = round(time.time() - started, 1)
        self.sizes[rootfs_tag] = image_size(rootfs_tag)

        started = time.time()
        context = self.work / "standin-base"
        context.mkdir(exist_ok=True)
        ca_copy = ""
        bundle = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
        if bundle.is_file():  # the host's CA bundle: pip in the builds reaches the index the host reaches
            shutil.copy(bundle, context / "host-ca-bundle.crt")
            ca_copy = (
                "COPY host-ca-bundle.crt /etc/ssl/certs/host-ca-bundle.crt\n"
                "ENV PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt"
            )
        (context / "Dockerfile").write_text(
            STANDIN_DOCKERFILE.format(rootfs=rootfs_tag, ca_copy=ca_copy, version=self.version, uid=APP_UID)
        )
        base_tag = f"{STANDIN_BASE}:{self.version}"
        sh("docker", "build", "--network", "host", "-t", base_tag, str(context), log_file=self.build_log)
        self.built.append(base_tag)
        for kind, tag in tags.items():
            kind_context = self.work / f"standin-{kind}"
            kind_context.mkdir(exist_ok=True)
            (kind_context / "Dockerfile").write_text(
                f"# Local stand-in for {tag} (scripts/docker_demo.py; only where no registry answers)\n"
                f'FROM {base_tag}\nENTRYPOINT ["{ENTRYPOINTS[kind]}"]\n'
            )
            sh("docker", "build", "-t", tag, str(kind_context), log_file=self.build_log)
            self.built.append(tag)
        self.timings["standin_images_s"] = round(time.time() - started, 1)

    def project_image(self) -> str:
        tag = f"fedvq-superexec:{self.version}"
        log(f"building {tag} from docker/Dockerfile (torch and its CUDA libraries: several GB to download)")
        started = time.time()
        sh(
            "docker",
            "build",
            "--network",
            "host",
            "-f",
            "docker/Dockerfile",
            "--build-arg",
            f"FLWR_VERSION={self.version}",
            "-t",
            tag,
            ".",
            log_file=self.build_log,
        )
        self.timings["project_image_s"] = round(time.time() - started, 1)
        self.sizes[tag] = image_size(tag)
        return tag

    def remove(self) -> None:
        for tag in reversed(self.built):
            sh("docker", "image", "rm", tag, check=False, capture=True)


# ---------------------------------------------------------------------------- sites
def write_sites(project_image: str) -> None:
    """docker/data/site-<i>/client_<i-1>.npz (3 true clusters, own row count) and writable docker/logs."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from data_gen.generate_test_data import GeneratorOptions, generate

    data = generate(GeneratorOptions(num_clients=NUM_SITES, samples_per_client=max(SITE_ROWS), random_state=7))
    for i, ((rows, labels), keep) in enumerate(zip(data.clients, SITE_ROWS, strict=True)):
        site = DOCKER / "data" / f"site-{i + 1}"
        site.mkdir(parents=True, exist_ok=True)
        np.savez(site / f"client_{i}.npz", data=rows[:keep], labels=labels[:keep])
    (DOCKER / "logs").mkdir(exist_ok=True)
    # the executors write experiments as `app` (uid 49999): hand docker/logs to it, through a root
    # container so that this works without sudo for any member of the docker group
    sh(
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        "root",
        "--entrypoint",
        "chown",
        "-v",
        f"{DOCKER / 'logs'}:/logs",
        project_image,
        f"{APP_UID}:{APP_UID}",
        "/logs",
        capture=True,
    )


# ---------------------------------------------------------------------------- compose
def compose_services(files: list[str]) -> dict:
    """The services of the compose files, merged as Compose merges them (commands and maps replaced)."""
    services: dict = {}
    for name in files:
        for service, spec in yaml.safe_load((DOCKER / name).read_text())["services"].items():
            merged = services.setdefault(service, {})
            merged.update({k: v for k, v in spec.items() if k != "volumes"})
    return services


def host_network_override(files: list[str]) -> tuple[dict, int]:
    """Every service on the host network; listeners on 127.0.0.1 at free ports, addresses rewritten."""
    services = compose_services(files)
    listeners = [name for name, spec in services.items() if "--port" in spec.get("command", [])]
    ports = dict(zip(listeners, free_ports(len(listeners)), strict=True))
    addresses = {}
    for name in listeners:
        command = services[name]["command"]
        addresses[f"{name}:{command[command.index('--port') + 1]}"] = f"127.0.0.1:{ports[name]}"
    override: dict = {"services": {}}
    for name, spec in services.items():
        command = [addresses.get(item, item) for item in spec.get("command", [])]
        if name in ports:
            command[command.index("--port") + 1] = str(ports[name])
        if "--host" in command:
            command[command.index("--host") + 1] = "127.0.0.1"
        service = {"network_mode": "host", "command": command}
        if "healthcheck" in spec:  # the healthchecks probe the listener's port: the new one
            test = [
                str(ports[name]) if item == spec["command"][spec["command"].index("--port") + 1] else item
                for item in spec["healthcheck"]["test"]
            ]
            service["healthcheck"] = {**spec["healthcheck"], "test": test}
        override["services"][name] = service
    return override, ports["superlink"]


class Topology:
    """One compose project (base files + the host-network override), up and down."""

    def __init__(self, engine: Engine, files: list[str], work: Path, name: str, nice: int = 0) -> None:
        self.engine = engine
        self.nice = nice
        self.files = files
        self.work = work
        self.name = name
        self.log_file = work / f"compose-{name}.log"
        self.up_done = False

    def compose(self, *files: Path) -> list[str]:
        args = [*self.engine.compose, "-p", PROJECT, "--project-directory", str(DOCKER)]
        for name in files:
            args += ["-f", str(name)]
        return args

    @property
    def base(self) -> list[str]:
        return self.compose(RESOLVED)

    def up(self, services: list[str] | None = None) -> int:
        override, port = host_network_override(self.files)
        OVERRIDE.write_text(
            "# written by scripts/docker_demo.py (removed again): host network, 127.0.0.1 ports\n"
            + yaml.safe_dump(override, sort_keys=False)
        )
        # On the host network a service publishes nothing (it listens on the host's 127.0.0.1 itself), and
        # docker-compose 1.29 refuses `ports` there; an override cannot delete a list entry (Compose v2's
        # `!reset` can), so the merged configuration is rendered and its `ports` dropped.
        rendered = subprocess.run(
            [*self.compose(*(DOCKER / f for f in self.files), OVERRIDE), "config"],
            cwd=DOCKER,
            capture_output=True,
            text=True,
        )
        if rendered.returncode != 0:
            raise DemoError(f"compose config failed: {rendered.stderr[-2000:]}")
        config = yaml.safe_load(rendered.stdout)
        for spec in config["services"].values():
            spec.pop("ports", None)
        RESOLVED.write_text(
            "# rendered by scripts/docker_demo.py from the compose files + compose.hostnet.yml "
            "(removed again)\n" + yaml.safe_dump(config, sort_keys=False)
        )
        self.up_done = True
        sh(*self.base, "up", "-d", "--no-build", *(services or []), log_file=self.log_file)
        self.renice()
        return port

    def renice(self) -> None:
        """``--renice``: the containers' processes (and the ClientApp processes they spawn later) at that nice.

        Flower 1.41 gives a ClientApp process 30 s (HEARTBEAT_DEFAULT_INTERVAL) from being handed a task to
        its first heartbeat; on a host so overloaded that starting Python and importing flwr takes longer,
        every task expires (401 "task-token authentication failed") and rounds get no replies."""
        if not self.nice:
            return
        ids = sh(*self.base, "ps", "-q", check=False, capture=True).stdout.split()
        for container in ids:
            pids = sh("docker", "top", container, "-eo", "pid", check=False, capture=True).stdout.split()[1:]
            if pids:
                sh("renice", "-n", str(self.nice), "-p", *pids, check=False, capture=True)

    def wait_healthy(self, service: str, timeout: float = 600) -> None:
        """Until the service's healthcheck passes (Compose 1.29 has no `up --wait`)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            container = sh(*self.base, "ps", "-q", service, check=False, capture=True).stdout.strip()
            if container:
                health = sh(
                    "docker", "inspect", "--format", "{{.State.Health.Status}}", container, check=False, capture=True
                ).stdout.strip()
                if health == "healthy":
                    return
            time.sleep(2)
        raise DemoError(f"{service} not healthy within {timeout:.0f} s\n{self.logs()[-3000:]}")

    def up_rest(self) -> None:
        sh(*self.base, "up", "-d", "--no-build", log_file=self.log_file)
        self.renice()

    def ps(self) -> str:
        return sh(*self.base, "ps", check=False, capture=True).stdout

    def logs(self) -> str:
        return sh(*self.base, "logs", "--no-color", "--tail", "60", check=False, capture=True).stdout

    def down(self) -> None:
        if not self.up_done:
            return
        (self.work / f"containers-{self.name}.log").write_text(
            sh(*self.base, "logs", "--no-color", check=False, capture=True).stdout
        )
        sh(*self.base, "down", "--remove-orphans", "--timeout", "20", check=False, log_file=self.log_file)
        self.up_done = False


# ---------------------------------------------------------------------------- jobs
class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.version = flower_version()
        self.work = Path(tempfile.mkdtemp(prefix="fedvq-docker-demo-"))
        self.flwr_home = self.work / "flwr_home"
        self.flwr_home.mkdir()
        self.engine = Engine(self.work)
        self.timings: dict = {}
        self.sizes: dict = {}
        self.results: dict = {}
        self.images = Images(self.version, self.work, args.standins, self.timings, self.sizes)
        self.topology: Topology | None = None

    @property
    def env(self) -> dict:
        return {**os.environ, "FLWR_HOME": str(self.flwr_home)}

    def connect(self, name: str, port: int, secure: bool) -> None:
        lines = [f"[superlink.{name}]", f'address = "127.0.0.1:{port}"']
        if secure:
            lines.append(f"root-certificates = {json.dumps(str(DOCKER / 'certificates' / 'ca.crt'))}")
        else:
            lines.append("insecure = true")
        config = self.flwr_home / "config.toml"
        text = config.read_text() if config.is_file() else '[superlink]\ndefault = "local"\n\n'
        config.write_text(text + "\n" + "\n".join(lines) + "\n")

    def wait_online(self, connection: str, timeout: float = 900) -> None:
        """Until the SuperLink lists every SuperNode as online (the secure case after registration)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = sh(
                "flwr",
                "supernode",
                "list",
                connection,
                "--format",
                "json",
                check=False,
                capture=True,
                env=self.env,
                timeout=120,
            )
            try:
                nodes = json.loads(out.stdout[out.stdout.index("{") :])["nodes"]
            except (ValueError, KeyError):
                nodes = []
            if sum(str(n.get("status", "")).lower() == "online" for n in nodes) >= NUM_SITES:
                return
            time.sleep(3)
        raise DemoError(f"not every SuperNode came online within {timeout:.0f} s\n{self.topology.logs()[-4000:]}")

    def submit(self, connection: str, name: str, config: dict) -> dict:
        """``flwr run . <connection> --stream``, then the run's status and its experiment folder."""
        overrides = " ".join(
            f"{k}={json.dumps(v) if isinstance(v, str) else _toml(v)}"
            for k, v in {**config, "experiment-name": name}.items()
        )
        folder = DOCKER / "logs" / name
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():  # written by the container user: remove through a container
            sh(
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                "--user",
                "root",
                "--entrypoint",
                "rm",
                "-v",
                f"{DOCKER / 'logs'}:/logs",
                f"fedvq-superexec:{self.version}",
                "-rf",
                f"/logs/{name}",
            )
        run_log = self.work / f"run-{name}.log"
        log(f'flwr run . {connection} --stream --run-config "{overrides}"')
        started = time.time()
        sh(
            "flwr",
            "run",
            ".",
            connection,
            "--stream",
            "--run-config",
            overrides,
            env=self.env,
            timeout=self.args.job_timeout,
            log_file=run_log,
        )
        seconds = round(time.time() - started, 1)
        status = sh("flwr", "ls", connection, "--format", "json", check=False, capture=True, env=self.env).stdout
        try:
            runs = json.loads(status[status.index("{") :])["runs"]
            run_status = runs[-1]["status"] if runs else "unknown"
        except (ValueError, KeyError):
            run_status = "unknown"
        summary_file = folder / "summary.json"
        if not summary_file.is_file() or not str(run_status).startswith("finished:completed"):
            raise DemoError(
                f"job {name}: run status {run_status!r}, summary.json "
                f"{'present' if summary_file.is_file() else 'missing'}\n{run_log.read_text()[-4000:]}"
                f"\n{self.topology.logs()[-4000:]}"
            )
        summary = json.loads(summary_file.read_text())
        rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines() if line.strip()]
        files = sorted(p.name for p in folder.iterdir())
        log(f"{name}: {run_status} in {seconds} s; {folder.relative_to(ROOT)}: {', '.join(files)}")
        return {
            "status": run_status,
            "seconds": seconds,
            "folder": str(folder.relative_to(ROOT)),
            "files": files,
            "rounds": [r.get("round") for r in rounds],
            "summary": summary,
        }

    def job_insecure(self, name: str, config: dict) -> dict:
        self.topology = Topology(self.engine, ["compose.yml"], self.work, name, self.args.renice)
        started = time.time()
        port = self.topology.up()
        self.connect(f"fedvq-docker-{name}", port, secure=False)
        self.wait_online(f"fedvq-docker-{name}")
        up = round(time.time() - started, 1)
        result = self.submit(f"fedvq-docker-{name}", f"docker-{name}", config)
        result["topology_up_s"] = up
        self.topology.down()
        return result

    def job_secure(self) -> dict:
        certs = DOCKER / "certificates"
        shutil.rmtree(certs, ignore_errors=True)
        sh("bash", "scripts/gen_certs.sh", str(certs), str(NUM_SITES), capture=True)
        # the containers run as `app`: the key files (mode 600) must belong to it
        sh(
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "root",
            "--entrypoint",
            "chown",
            "-v",
            f"{certs}:/certs",
            f"fedvq-superexec:{self.version}",
            "-R",
            f"{APP_UID}:{APP_UID}",
            "/certs",
            capture=True,
        )
        self.topology = Topology(
            self.engine, ["compose.yml", "compose.secure.yml"], self.work, "secure", self.args.renice
        )
        started = time.time()
        port = self.topology.up(["superlink"])
        connection = "fedvq-docker-secure"
        self.connect(connection, port, secure=True)
        self.topology.wait_healthy("superlink")
        deadline = time.time() + 120
        for i in range(1, NUM_SITES + 1):  # only registered keys may connect
            while True:
                done = sh(
                    "flwr",
                    "supernode",
                    "register",
                    str(certs / f"supernode-{i}.pub"),
                    connection,
                    check=False,
                    capture=True,
                    env=self.env,
                    timeout=120,
                )
                if done.returncode == 0:
                    break
                if time.time() > deadline:
                    raise DemoError(f"registering supernode-{i}: {done.stdout[-2000:]}\n{self.topology.logs()}")
                time.sleep(2)  # the SuperLink is still starting
        self.topology.up_rest()
        self.wait_online(connection)
        up = round(time.time() - started, 1)
        result = self.submit(connection, "docker-secure", FEDAVG)
        result["topology_up_s"] = up
        self.topology.down()
        return result

    def run(self) -> int:
        started = time.time()
        try:
            self.engine.start()
            self.images.flower_images()
            if not self.args.no_build:
                project = self.images.project_image()
            else:
                project = f"fedvq-superexec:{self.version}"
            write_sites(project)
            failed = []
            for job in self.args.jobs:  # each on its own topology: one that fails does not stop the others
                log(f"--- job {job}")
                try:
                    if job == "insecure":
                        self.results[job] = self.job_insecure("insecure", FEDAVG)
                    elif job == "secure":
                        self.results[job] = self.job_secure()
                    elif job == "kmeans":
                        self.results[job] = self.job_insecure("kmeans", KMEANS)
                except DemoError as exc:
                    log(f"job {job} FAILED: {exc}")
                    self.results[f"{job}_error"] = str(exc)[:4000]
                    failed.append(job)
                    if self.topology is not None:
                        self.topology.down()
            self.check_results()
            if failed:
                raise DemoError(f"jobs failed: {', '.join(failed)}")
            ok = True
        except (DemoError, subprocess.SubprocessError, OSError) as exc:
            log(f"FAILED: {exc}")
            ok = False
        except KeyboardInterrupt:
            log("interrupted")
            ok = False
        finally:
            self.teardown()
        self.timings["total_s"] = round(time.time() - started, 1)
        self.report(ok)
        return 0 if ok else 1

    def check_results(self) -> None:
        for job in ("insecure", "secure"):
            if job in self.results:
                summary = self.results[job]["summary"]
                accuracy = (summary.get("final") or {}).get("accuracy")
                if self.results[job]["rounds"] != [1, 2] or accuracy is None or not 0 <= accuracy <= 1:
                    raise DemoError(f"job {job}: rounds {self.results[job]['rounds']}, summary {summary}")
        if "kmeans" in self.results:
            summary = self.results["kmeans"]["summary"]
            if summary.get("method") != "kmeans" or summary["kmeans"]["num_samples"] != sum(SITE_ROWS):
                raise DemoError(f"job kmeans: each site should hold its own rows ({SITE_ROWS}): {summary}")

    def teardown(self) -> None:
        try:
            if self.topology is not None:
                self.topology.down()
        finally:
            OVERRIDE.unlink(missing_ok=True)
            RESOLVED.unlink(missing_ok=True)
            if self.engine.answers():
                left = sh(
                    "docker",
                    "ps",
                    "-q",
                    "--filter",
                    f"label=com.docker.compose.project={PROJECT}",
                    check=False,
                    capture=True,
                ).stdout.split()
                if left:
                    sh("docker", "rm", "-f", *left, check=False, capture=True)
                self.results["containers_left"] = len(
                    sh("docker", "ps", "-q", check=False, capture=True).stdout.split()
                )
                if self.args.remove_images:
                    self.images.remove()
            self.engine.stop()
            kept = DEMO_OUT
            kept.mkdir(parents=True, exist_ok=True)
            for item in self.work.glob("*.log"):
                shutil.copy(item, kept / item.name)
            shutil.rmtree(self.work, ignore_errors=True)

    def report(self, ok: bool) -> None:
        report = {
            "ok": ok,
            "flower": self.version,
            "timings_s": self.timings,
            "image_sizes_mb": {k: round(v / 1e6) for k, v in self.sizes.items()},
            "jobs": {k: v for k, v in self.results.items() if isinstance(v, dict)},
            "errors": {k: v for k, v in self.results.items() if k.endswith("_error")},
            "containers_left": self.results.get("containers_left"),
            "dockerd_started_here": self.engine.process is not None,
        }
        DEMO_OUT.mkdir(exist_ok=True)
        (DEMO_OUT / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        log("images: " + ", ".join(f"{k} {v} MB" for k, v in report["image_sizes_mb"].items()))
        log("seconds: " + ", ".join(f"{k} {v}" for k, v in self.timings.items()))
        for job, result in report["jobs"].items():
            summary = result["summary"]
            figures = {k: summary[k] for k in ("rounds", "num_clients", "ari", "inertia") if k in summary}
            if (summary.get("final") or {}).get("accuracy") is not None:
                figures["final_accuracy"] = round(summary["final"]["accuracy"], 4)
            log(
                f"job {job}: {result['status']} in {result['seconds']} s (topology up {result['topology_up_s']} s); "
                f"{figures}"
            )
        log(f"containers left running: {report['containers_left']}; {'OK' if ok else 'FAILED'}")


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # SIGTERM and SIGINT tear down like Ctrl-C (a shell's background job starts with SIGINT ignored)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--jobs",
        default="insecure,secure,kmeans",
        help="comma-separated, from insecure, secure, kmeans (default: all three)",
    )
    parser.add_argument(
        "--standins",
        choices=("auto", "always", "never"),
        default="auto",
        help="build local flwr/* stand-ins: where they cannot be pulled (auto), always, never",
    )
    parser.add_argument("--no-build", action="store_true", help="use the existing fedvq-superexec image")
    parser.add_argument("--remove-images", action="store_true", help="remove the images this script built")
    parser.add_argument(
        "--renice",
        type=int,
        default=0,
        help="run the containers' processes at this nice value (root; e.g. -10 on an overloaded "
        "host where ClientApp processes otherwise miss Flower's 30 s start-up window)",
    )
    parser.add_argument("--job-timeout", type=float, default=1800, help="seconds one flwr run may take")
    args = parser.parse_args(argv)
    args.jobs = [job.strip() for job in args.jobs.split(",") if job.strip()]
    unknown = set(args.jobs) - {"insecure", "secure", "kmeans"}
    if unknown:
        parser.error(f"--jobs: unknown {sorted(unknown)}; allowed: insecure, secure, kmeans")
    return Demo(args).run()


if __name__ == "__main__":
    sys.exit(main())
