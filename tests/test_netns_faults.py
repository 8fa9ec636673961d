"""Faults of a deployment across hosts: every site in its own network namespace (issue 26).

One secure topology from scripts/netns_topology.py serves the module: the SuperLink's host
(``10.231.0.1``, TLS with that IP in the certificate's subjectAltName, SuperNode
authentication, state in a database file so that a restart keeps the registered keys) and
three site hosts (``10.231.0.10-12``) whose uplinks tbf shapes to 50 Mbit/s. Every job is a
real ``flwr run`` of FedAvg on digits (3 IID partitions, 1 local epoch), and every test
asserts what summary.json / rounds.jsonl recorded:

* the layout: namespaces, addresses, the certificate, a shaped uplink measured;
* SuperNodes with an unregistered key or with no key are refused while a run goes on, and
  that run is undisturbed (it is also the reference run for the resume test);
* in round 2 one site's link goes down for longer than the round timeout and another site's
  SuperNode is SIGKILLed and restarted with the same key: round 2 drops both, round 3 trains
  on all three again, under the same node ids (one run for both faults: each costs the
  SuperLink's heartbeat lapse, about 60 s, and CI time is short);
* the SuperLink is SIGKILLed mid round 2 and restarted: Flower marks the run failed, the
  experiment folder is intact, and ``resume-from`` finishes with the reference run's figures.

Needs root, ``ip netns`` and openssl; skips with the reason elsewhere. Marked ``netns``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("local_topology", ROOT / "scripts" / "local_topology.py")
local_topology = sys.modules.setdefault("local_topology", importlib.util.module_from_spec(_spec))
if not hasattr(local_topology, "LocalTopology"):
    _spec.loader.exec_module(local_topology)
netns_topology = local_topology.netns_module()


def _unavailable() -> str | None:
    missing = [t for t in ("flwr", "flower-superlink", "flower-supernode", "openssl") if not shutil.which(t)]
    if missing:
        return f"{', '.join(missing)} not installed"
    return netns_topology.netns_unavailable()


_REASON = _unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_REASON is not None, reason=f"no network namespaces: {_REASON}")]

UPLINK_MBIT = 50
#: 2 rounds: the reference run and the SuperLink-restart run (which must match it)
JOB = {"num-server-rounds": 2, "train.local-epochs": 1, "eval-every": 2, "partition.kind": "iid", "round-timeout": 70.0}
#: longer than the SuperLink's heartbeat lapse (2 x 30 s): a dead node ends a round by Flower's
#: "node unavailable" error, never by a healthy node being slow on a loaded machine
ROUND_TIMEOUT = 70.0
REFERENCE: dict = {}


@pytest.fixture(scope="module")
def lan(tmp_path_factory):
    root = tmp_path_factory.mktemp("netns")
    topology = netns_topology.NetnsTopology(
        3, secure=True, directory=root / "topology", uplink_mbit=UPLINK_MBIT, database=True
    )
    started = time.time()
    with topology:
        print(f"netns topology up in {time.time() - started:.0f} s: {netns_topology.describe(topology)}")
        yield topology, root / "experiments"
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in namespaces for n in topology.state.namespaces), namespaces
    assert local_topology.marked_pids(topology.state.marker) == [], "processes of the topology outlived it"


def _rounds(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def _count(path: Path, text: str) -> int:
    return path.read_bytes().count(text.encode()) if path.is_file() else 0


def _wait_for(path: Path, text: str, count: int, run: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _count(path, text) >= count:
            return
        assert run.poll() is None, f"flwr run ended early with {run.returncode}"
        time.sleep(0.3)
    raise TimeoutError(f"{count} x '{text}' did not appear in {path} within {timeout} s")


def _summary(logs: Path, name: str) -> dict:
    return json.loads((logs / name / "summary.json").read_text())


def test_each_host_has_its_namespace_tls_names_the_superlink_address_and_uplinks_are_shaped(lan):
    topology, _ = lan
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert set(topology.state.namespaces) <= set(namespaces) and len(topology.state.namespaces) == 4
    link = topology.superlink_command()
    assert link[link.index("--host") + 1] == "10.231.0.1" and "--enable-supernode-auth" in link
    node = topology.supernode_command(2)
    assert node[node.index("--superlink") + 1] == "10.231.0.1:9092" and "--insecure" not in node
    san = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(topology.certs / "server.pem")],
        capture_output=True,
        text=True,
    ).stdout
    assert "IP Address:10.231.0.1" in san
    assert "Uvicorn running on https://10.231.0.1:9092" in (topology.logs / "superlink.log").read_text()
    assert all(f"rate {UPLINK_MBIT}Mbit" in topology.qdisc(i) for i in range(3))
    # what a site can push to the SuperLink's host at 10 Mbit/s (tbf), measured over TCP
    topology.shape_uplink(0, 10)
    try:
        mbit = _measured_uplink(topology, 0, 2_000_000)
    finally:
        topology.shape_uplink(0, UPLINK_MBIT)
    print(f"site 0 uplink shaped to 10 Mbit/s: measured {mbit:.2f} Mbit/s")
    assert 7.0 < mbit < 10.5


def _measured_uplink(topology, site: int, size: int) -> float:
    """Mbit/s of one TCP transfer of ``size`` bytes from a site to a listener on the SuperLink's host."""
    receiver = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('10.231.0.1', 9300)); s.listen(); print('ready', flush=True)\n"
        "c, _ = s.accept(); n = 0; t = None\n"
        "while (d := c.recv(65536)):\n"
        "    t = t or time.time(); n += len(d)\n"
        "print(n * 8 / 1e6 / (time.time() - t), flush=True)\n"
    )
    sender = f"import socket; c = socket.create_connection(('10.231.0.1', 9300)); c.sendall(b'x' * {size}); c.close()"
    listening = subprocess.Popen(
        topology.in_namespace(topology.link_namespace, [sys.executable, "-c", receiver]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listening.stdout.readline().strip() == "ready"
        subprocess.run(topology.in_namespace(topology.site_namespace(site), [sys.executable, "-c", sender]), check=True)
        return float(listening.communicate(timeout=60)[0].strip())
    finally:
        if listening.poll() is None:
            listening.kill()


def test_supernodes_with_an_unregistered_key_or_no_key_are_refused_and_the_run_is_undisturbed(lan, tmp_path):
    topology, logs = lan
    site0 = topology.logs / "supernode-0.log"
    before = _count(site0, "Receiving: train message")
    run = topology.start_run({**JOB, "log-dir": str(logs), "experiment-name": "reference"}, log_name="reference")
    try:
        _wait_for(site0, "Receiving: train message", before + 1, run)  # round 1 is under way
        _write_ssh_key(tmp_path / "rogue")
        rogues = {}
        for name, key in (("rogue-unregistered", str(tmp_path / "rogue")), ("rogue-no-key", "")):
            index, _ = topology.add_site()  # a new host on the LAN
            rogues[name] = topology.start_supernode(index, name, key, ("--max-retries", "1"), partition=0)
        codes = {name: process.wait(timeout=300) for name, process in rogues.items()}
        assert run.wait(timeout=900) == 0
    finally:
        if run.poll() is None:
            run.kill()
    summary, rounds = _summary(logs, "reference"), _rounds(logs / "reference")
    REFERENCE.update(summary=summary, rounds=rounds)
    lines = {name: _last_error(topology.logs / f"{name}.log") for name in rogues}
    print(f"refused SuperNodes: exit codes {codes}; {lines}")
    final = summary["final"]
    print(f"reference run: final accuracy {final['accuracy']:.4f}, per client {final['per_client_accuracy']}")
    assert all(code != 0 for code in codes.values())
    # Flower's exit code 305; the unregistered key fails activation, the keyless node is told to register
    assert all("Exit Code: 305" in line for line in lines.values())
    assert lines["rogue-unregistered"].endswith("[code: 2004] Failed to activate SuperNode.")
    assert "[code: 2001] SuperNode authentication is enabled" in lines["rogue-no-key"]
    # undisturbed: the three registered sites only, every round, nothing dropped or rejected
    assert summary["status"] == "completed" and summary["rounds"] == 2 and summary["num_clients"] == 3
    assert all(r["num_sampled_train"] == 3 and sorted(r["train"]["clients"]) == ["0", "1", "2"] for r in rounds)
    assert summary["dropped_total"] == 0 and summary["rejected_total"] == 0
    assert summary["final"]["partition_ids"] == [0, 1, 2] and summary["final"]["accuracy"] > 0.3
    assert len(topology.online_nodes()) == 3


def _last_error(path: Path) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace"))
    lines = [line.strip() for line in text.splitlines() if "code:" in line or "Exit Code" in line]
    return " / ".join(lines[-2:])


def _write_ssh_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )


def test_a_link_down_past_the_round_timeout_and_a_restarted_supernode_drop_round_2_and_rejoin_in_round_3(lan):
    topology, logs = lan
    cut, killed = 2, 1  # site 2 loses its link, site 1's SuperNode process dies
    ids = {i: topology.node_id_of(f"supernode-{i}") for i in range(3)}
    job = {
        **JOB,
        "num-server-rounds": 3,
        "eval-every": 3,
        "round-timeout": ROUND_TIMEOUT,
        "min-available-nodes": 3,  # round 3 waits (at most round-timeout) for every site to be back
        "log-dir": str(logs),
        "experiment-name": "faults",
    }
    logs_of = {i: topology.logs / f"supernode-{i}.log" for i in (cut, killed)}
    before = {i: _count(path, "Receiving: train message") for i, path in logs_of.items()}
    run = topology.start_run(job, log_name="faults")
    try:
        for i, path in logs_of.items():  # both sites hold their round-2 train message
            _wait_for(path, "Receiving: train message", before[i] + 2, run)
        topology.link_down(cut)
        down_at = time.time()
        # the link stays down longer than the round timeout (a timer thread: it starts no process)
        back = threading.Timer(ROUND_TIMEOUT + 5, topology.link_up, args=(cut,))
        back.start()
        topology.kill_supernode(killed)
        # in this thread: a SuperNode started from another thread gets its parent-death signal when that
        # thread ends (PR_SET_PDEATHSIG is per thread)
        restarted = topology.restart_supernode(killed)
        back.join()
        down_s = time.time() - down_at
        assert run.wait(timeout=900) == 0
    finally:
        topology.link_up(cut)
        if run.poll() is None:
            run.kill()
    summary, rounds = _summary(logs, "faults"), _rounds(logs / "faults")
    print(
        f"link of site {cut} down {down_s:.0f} s (round-timeout {ROUND_TIMEOUT:g} s); SuperNode {killed} restarted: "
        f"{restarted}; per round: "
        + "; ".join(
            f"round {r['round']} dropped partitions {r['dropped_partitions']}, trained "
            f"{sorted(r['train']['clients'])}, {r['wall_time_s']:.0f} s"
            for r in rounds
        )
        + f"; final {summary['final'].get('accuracy')} on {summary['final'].get('partition_ids')}"
        + (f"; stopped early: {summary['stopped_early']}" if "stopped_early" in summary else "")
    )
    first, second, third = rounds
    assert sorted(first["train"]["clients"]) == ["0", "1", "2"] and first["dropped"] == []
    # round 2: both faulty sites sampled, both dropped (never rejected), trained on the healthy one
    assert second["num_sampled_train"] == 3 and second["dropped"] == sorted([ids[cut], ids[killed]])
    assert second["dropped_partitions"] == [1, 2] and sorted(second["train"]["clients"]) == ["0"]
    assert second["rejected"] == []
    # the restarted SuperNode came back as the same node (same key -> same node id), after Flower refused
    # to activate it while its old session still counted as online
    assert restarted["node_id"] == ids[killed] and topology.node_id_of(f"supernode-{cut}") == ids[cut]
    # round 3: all three sites again, as the same nodes with the same partitions
    assert third["dropped"] == [] and sorted(third["train"]["clients"]) == ["0", "1", "2"]
    assert {p: c["node-id"] for p, c in third["train"]["clients"].items()} == {str(i): ids[i] for i in range(3)}
    assert summary["status"] == "completed" and summary["rounds"] == 3 and summary["num_clients"] == 3
    assert summary["dropped_total"] == 2 and summary["rejected_total"] == 0
    assert summary["final"]["partition_ids"] == [0, 1, 2]


def test_a_superlink_killed_mid_run_leaves_a_sound_folder_and_resume_from_gives_the_same_figures(lan):
    from fedvq_app.server.checkpoint import load_checkpoint

    topology, logs = lan
    if not REFERENCE:  # run alone: the uninterrupted run first
        assert topology.run({**JOB, "log-dir": str(logs), "experiment-name": "reference"}, timeout=900) == 0
        REFERENCE.update(summary=_summary(logs, "reference"), rounds=_rounds(logs / "reference"))
    folder = logs / "interrupted"
    site0 = topology.logs / "supernode-0.log"
    before = _count(site0, "Receiving: train message")
    run = topology.start_run({**JOB, "log-dir": str(logs), "experiment-name": "interrupted"}, log_name="interrupted")
    try:
        _wait_for(site0, "Receiving: train message", before + 2, run)  # round 2 is under way
        topology.kill_superlink()
        after_kill = sorted(p.name for p in folder.iterdir())
        checkpoint_round = load_checkpoint(folder).server_round
        lines = _rounds(folder)  # every line parses
        topology.restart_superlink()
        topology.wait_for_nodes(3, timeout=180)
        cli_code = run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert topology.run({**JOB, "log-dir": str(logs), "resume-from": str(folder)}, timeout=900) == 0
    # what Flower 1.41 makes of the interrupted run once the SuperLink is back: it never continues it; it marks
    # it failed, but not at a fixed moment (seen 'running' right after the restart): look for up to 60 s
    interrupted_id, deadline = _run_id(topology.logs / "interrupted.log"), time.time() + 60
    while True:
        runs = json.loads(topology.flwr("ls", topology.connection, "--format", "json").stdout)["runs"]
        interrupted = next(r for r in runs if r["run-id"] == interrupted_id)
        if interrupted["status"].startswith("finished") or time.time() > deadline:
            break
        time.sleep(5)
    summary, rounds = _summary(logs, "interrupted"), _rounds(folder)
    reference = REFERENCE["summary"]
    print(
        f"SuperLink killed in round 2: folder {after_kill}, checkpoint of round {checkpoint_round}; flwr run exit "
        f"{cli_code}; after the restart the run is {interrupted['status']} ({interrupted['status-details']}); "
        f"resumed: final accuracy {summary['final']['accuracy']:.6f} "
        f"vs uninterrupted {reference['final']['accuracy']:.6f}"
    )
    assert "summary.json" not in after_kill and {"config.json", "checkpoint.npz", "rounds.jsonl"} <= set(after_kill)
    assert checkpoint_round == 1 and [r["round"] for r in lines] == [1]
    assert interrupted["status"] in ("finished:failed", "running")  # never completed, never continued
    assert summary["status"] == "completed" and [r["round"] for r in rounds] == [1, 2]
    # tolerance: accuracy within 0.01 per client (3 of the 360 test images), losses within 0.1 %. Round 1 is
    # identical to the uninterrupted run's; in round 2 one site's training loss takes one of two values in the 6th
    # digit (1.9156314 / 1.9156369) from run to run, resumed or not (seen both ways round in two test runs): the
    # final test loss then differs by 3e-4 relative, every accuracy stayed identical
    assert rounds[0]["train"] == REFERENCE["rounds"][0]["train"]  # round 1, kept from the interrupted run
    assert summary["final"]["per_client_accuracy"] == pytest.approx(reference["final"]["per_client_accuracy"], abs=0.01)
    assert summary["final"]["test_loss"] == pytest.approx(reference["final"]["test_loss"], rel=1e-3)
    last, uninterrupted = rounds[-1]["train"]["aggregated"], REFERENCE["rounds"][-1]["train"]["aggregated"]
    assert last == pytest.approx(uninterrupted, rel=1e-3)


def _run_id(log: Path) -> str:
    text = log.read_text(errors="replace")
    return text.split("Successfully started run", 1)[1].split()[0]
