"""docker/compose*.yml against the process topology of scripts/local_topology.py.

No Docker engine runs here, so the compose files are parsed (pyyaml) and checked:
the services, the images pinned to the installed Flower version, every command's
flags (the security flags must be exactly those the process topology uses), the
ports that connect SuperLink, SuperNodes and executors, and the volumes (site data
where the ClientApps run, certificates where the flags point).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
FLWR_VERSION = importlib.metadata.version("flwr")
NUM_SUPERNODES = 3
SECURITY_FLAGS = (
    "--insecure",
    "--ssl-ca-certfile",
    "--ssl-certfile",
    "--ssl-keyfile",
    "--enable-supernode-auth",
    "--root-certificates",
    "--auth-supernode-private-key",
)

_spec = importlib.util.spec_from_file_location("local_topology", ROOT / "scripts" / "local_topology.py")
local_topology = sys.modules.setdefault("local_topology", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(local_topology)


# ---------------------------------------------------------------------------- compose model
def _merge(base: dict, override: dict) -> dict:
    """Docker Compose's merge of an override file: commands replace, volumes merge by target, maps recurse."""
    merged = dict(base)
    for key, value in override.items():
        if key == "volumes" and key in merged:
            by_target = {_volume(v)[1]: v for v in merged[key]}
            by_target.update({_volume(v)[1]: v for v in value})
            merged[key] = list(by_target.values())
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        elif key in ("ports", "depends_on") and key in merged:
            merged[key] = list(dict.fromkeys([*merged[key], *value]))
        else:
            merged[key] = value
    return merged


def _load(*names: str) -> dict:
    services: dict = {}
    for name in names:
        data = yaml.safe_load((DOCKER / name).read_text())
        for service, spec in data["services"].items():
            services[service] = _merge(services.get(service, {}), spec)
    return services


def _volume(entry: str) -> tuple[str, str, str]:
    source, target, *mode = entry.split(":")
    return source, target, (mode[0] if mode else "rw")


def _flag(command: list[str], name: str) -> str | None:
    """The value after ``name`` (``--name value`` or ``--name=value``)."""
    for i, item in enumerate(command):
        if item == name:
            return command[i + 1] if i + 1 < len(command) else ""
        if item.startswith(name + "="):
            return item.split("=", 1)[1]
    return None


def _flags(command: list[str]) -> set[str]:
    return {item.split("=", 1)[0] for item in command if item.startswith("--")}


def _security(command: list[str]) -> set[str]:
    return _flags(command) & set(SECURITY_FLAGS)


def _topology(secure: bool):
    topology = local_topology.LocalTopology(NUM_SUPERNODES, secure=secure, data_dir="/app/data")
    topology.state = local_topology.TopologyState("m", "d", "c", secure, 8000, [9094] * NUM_SUPERNODES)
    return topology


VARIANTS = {"insecure": ("compose.yml",), "secure": ("compose.yml", "compose.secure.yml")}


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    return request.param, _load(*VARIANTS[request.param]), _topology(request.param == "secure")


# ---------------------------------------------------------------------------- tests
def test_services_are_a_superlink_its_executor_and_three_supernodes_with_theirs(variant):
    _, services, _ = variant
    expected = {"superlink", "superexec-serverapp"}
    expected |= {f"{kind}-{i}" for i in range(1, NUM_SUPERNODES + 1) for kind in ("supernode", "superexec-clientapp")}
    assert set(services) == expected


def test_images_are_the_official_ones_pinned_to_the_installed_flower(variant):
    _, services, _ = variant
    assert services["superlink"]["image"] == f"flwr/superlink:{FLWR_VERSION}"
    for i in range(1, NUM_SUPERNODES + 1):
        assert services[f"supernode-{i}"]["image"] == f"flwr/supernode:{FLWR_VERSION}"
    executors = [s for name, s in services.items() if name.startswith("superexec")]
    for executor in executors:
        assert executor["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / executor["build"]["context"] / executor["build"]["dockerfile"]).resolve().is_file()
        assert executor["build"]["args"]["FLWR_VERSION"] == FLWR_VERSION
        assert executor["image"].endswith(f":{FLWR_VERSION}")


def test_dockerfile_builds_on_the_superexec_image_and_installs_this_project():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert f"ARG FLWR_VERSION={FLWR_VERSION}" in dockerfile
    assert re.search(r"^FROM flwr/superexec:\$\{FLWR_VERSION\}$", dockerfile, re.M)
    assert "pip install --no-cache-dir ." in dockerfile and "COPY --chown=app:app fedvq_app" in dockerfile
    assert re.search(r'^ENTRYPOINT \["flower-superexec"\]$', dockerfile, re.M)
    # the image keeps the base image's flwr: its sed drops exactly the flwr[simulation] pin of pyproject.toml
    pyproject = (ROOT / "pyproject.toml").read_text()
    pin = f'"flwr[simulation]=={FLWR_VERSION}",'
    assert pin in pyproject
    (pattern,) = re.findall(r"sed -i 's/(.+?)//' pyproject\.toml", dockerfile)
    expected = "\n".join("" if line.strip() == pin else line for line in pyproject.split("\n"))
    assert re.sub(pattern, "", pyproject, flags=re.M) == expected != pyproject
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored and {"!pyproject.toml", "!README.md", "!fedvq_app/"} <= set(ignored)


def test_superlink_flags_and_port_match_the_process_topology(variant):
    name, services, topology = variant
    superlink = services["superlink"]
    command = superlink["command"]
    assert _security(command) == _security(topology.superlink_command()), name
    assert _flag(command, "--isolation") == "process"  # executors are their own containers
    assert _flag(command, "--host") == "0.0.0.0"
    port = _flag(command, "--port")
    # the flwr CLI reaches the one HTTP port, on the loopback only (the insecure topology is for development)
    assert superlink["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert _flags(command) <= _flags(topology.superlink_command()) | {"--isolation"}


def test_supernodes_connect_to_the_superlink_with_the_topology_node_config(variant):
    name, services, topology = variant
    port = _flag(services["superlink"]["command"], "--port")
    for i in range(NUM_SUPERNODES):
        command = services[f"supernode-{i + 1}"]["command"]
        assert _flag(command, "--superlink") == f"superlink:{port}"
        assert _flag(command, "--isolation") == "process" and _flag(command, "--host") == "0.0.0.0"
        node_config = parse_config_args([_flag(command, "--node-config")])
        assert node_config == parse_config_args([topology.node_config(i)])
        assert node_config == {"partition-id": i, "num-partitions": NUM_SUPERNODES, "data-dir": "/app/data"}
        assert _security(command) == _security(topology.supernode_command(i)), f"{name} supernode-{i + 1}"
        assert _flags(command) <= _flags(topology.supernode_command(i)) | {"--isolation"}


def test_executors_reach_their_runtime_api_and_sites_mount_their_data(variant):
    name, services, _ = variant
    link_port = _flag(services["superlink"]["command"], "--port")
    server = services["superexec-serverapp"]
    assert _flag(server["command"], "--runtime-api-address") == f"superlink:{link_port}"
    assert ("--root-certificates" in server["command"]) == (name == "secure")
    assert ("--insecure" in server["command"]) == (name == "insecure")
    assert any(_volume(v)[1] == "/app/logs" for v in server["volumes"])  # log-dir "logs" under /app
    assert "superlink" in server["depends_on"]
    for i in range(1, NUM_SUPERNODES + 1):
        node, executor = services[f"supernode-{i}"], services[f"superexec-clientapp-{i}"]
        node_port = _flag(node["command"], "--port")
        assert _flag(executor["command"], "--runtime-api-address") == f"supernode-{i}:{node_port}"
        assert "--insecure" in executor["command"]  # the site-internal link, see compose.secure.yml
        data_dir = parse_config_args([_flag(node["command"], "--node-config")])["data-dir"]
        mounts = {_volume(v)[1]: _volume(v) for v in executor["volumes"]}
        assert mounts[data_dir] == (f"./data/site-{i}", data_dir, "ro")  # each site its own folder
        assert f"supernode-{i}" in executor["depends_on"]


def test_secure_variant_mounts_every_file_its_flags_name_from_gen_certs():
    services = _load(*VARIANTS["secure"])
    generated = {"ca.crt", "server.pem", "server.key"} | {f"supernode-{i}" for i in range(1, NUM_SUPERNODES + 1)}
    script = (ROOT / "scripts" / "gen_certs.sh").read_text()
    assert all(name in script for name in ("ca.crt", "server.pem", "server.key", "supernode-$i"))
    for name, service in services.items():
        values = [_flag(service["command"], flag) for flag in SECURITY_FLAGS]
        paths = [v for v in values if v and v.startswith("/")]
        mounts = {_volume(v)[1]: _volume(v) for v in service.get("volumes", [])}
        for path in paths:
            assert path in mounts, f"{name}: {path} is not mounted"
            source = mounts[path][0]
            assert source.startswith("./certificates/") and Path(source).name in generated
            assert mounts[path][2] == "ro"


def test_gpu_override_gives_each_clientapp_executor_a_gpu():
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yml").read_text())["services"]
    assert set(gpu) == {f"superexec-clientapp-{i}" for i in range(1, NUM_SUPERNODES + 1)}
    for service in gpu.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_listeners_are_probed_on_their_port_and_what_connects_waits_until_they_are_healthy(variant):
    _, services, _ = variant
    for name in ["superlink", *(f"supernode-{i}" for i in range(1, NUM_SUPERNODES + 1))]:
        test = services[name]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python"] and test[-1] == _flag(services[name]["command"], "--port"), name
    waits = {"superexec-serverapp": "superlink"}
    waits |= {f"supernode-{i}": "superlink" for i in range(1, NUM_SUPERNODES + 1)}
    waits |= {f"superexec-clientapp-{i}": f"supernode-{i}" for i in range(1, NUM_SUPERNODES + 1)}
    for name, target in waits.items():
        assert services[name]["depends_on"] == {target: {"condition": "service_healthy"}}, name
