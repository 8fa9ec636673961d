"""What every benchmark shares: the machine description and the results file."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """Cores, CPU model, memory, library versions, GPU: the context of a figure."""
    import flwr  # noqa: PLC0415
    import torch  # noqa: PLC0415

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flwr": flwr.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def commit_of(root: Path) -> str:
    """Short commit of the checkout at ``root``, ``+dirty`` when tracked files differ from it."""
    import subprocess  # noqa: PLC0415

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    # the results files a benchmark appends to do not make the code dirty
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
        cwd=root,
        capture_output=True,
    )
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def emit(name: str, figures: dict, quick: bool = False) -> dict:
    """Print one JSON line and append it to ``bench/results/<name>.jsonl``.

    ``--quick`` smoke runs print their line but are not recorded: the results
    files (and BENCHMARKS.md) hold only full measurements.
    """
    record = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": commit_of(Path(__file__).resolve().parent.parent),
        "machine": machine(),
        **figures,
    }
    line = json.dumps(record)
    print(line, flush=True)
    if quick:
        return record
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / f"{name}.jsonl").open("a") as fh:
        fh.write(line + "\n")
    return record


def rounds_of(experiment_dir: Path) -> list[dict]:
    """The per-round records of an experiment folder."""
    return [json.loads(x) for x in (experiment_dir / "rounds.jsonl").read_text().splitlines()]


def _pss_bytes(pid_dir: Path) -> int:
    for line in (pid_dir / "smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def scoped_memory(marker: bytes) -> int:
    """Proportional set size of every process whose environment holds ``marker``.

    Flower's daemons, the simulation engine and its workers all inherit the run's
    ``FLWR_HOME``, so this is the memory of one ``flwr run`` and nothing else on the
    machine (PSS splits shared pages, so libraries are not counted once per worker).
    """
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                total += _pss_bytes(proc)
        except OSError:
            continue
    return total


def _process_name(cmdline: list[bytes]) -> str:
    """A short name for a process: the program, or for Python the script or module it runs."""
    args = [a.decode(errors="replace") for a in cmdline if a]
    if not args:
        return "?"
    name = Path(args[0]).name
    if name.startswith("python"):
        rest = args[1:]
        if rest[:1] == ["-m"] and len(rest) > 1:
            return f"python -m {rest[1]}"
        if rest[:1] == ["-c"]:
            return "python -c"
        scripts = [a for a in rest if not a.startswith("-")]
        return Path(scripts[0]).name if scripts else name
    return name[:60]


def scoped_peaks(marker: bytes) -> dict[int, tuple[str, int]]:
    """pid -> (name, peak RSS in bytes so far: the kernel's VmHWM) of the processes holding ``marker``."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            status = (proc / "status").read_text().splitlines()
            hwm = next((int(x.split()[1]) * 1024 for x in status if x.startswith("VmHWM:")), 0)
            out[int(proc.name)] = (_process_name((proc / "cmdline").read_bytes().split(b"\0")), hwm)
        except (OSError, StopIteration):
            continue
    return out


def system_memory() -> int:
    """MemTotal - MemAvailable: everything in use on the machine."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


class MemorySampler:
    """Peak memory while a block runs: of the processes carrying ``env_marker``, or of the machine."""

    def __init__(self, interval_s: float = 0.5, env_marker: str | None = None) -> None:
        import threading  # noqa: PLC0415

        self.interval_s = interval_s
        self._marker = env_marker.encode() if env_marker else None
        self.baseline = 0 if self._marker else self._used()
        self.peak = self.baseline
        #: pid -> (name, peak RSS bytes) of every process seen with the marker
        self.processes: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        return scoped_memory(self._marker) if self._marker else system_memory()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._used())
            if self._marker:
                for pid, (name, hwm) in scoped_peaks(self._marker).items():
                    self.processes[pid] = (name, max(hwm, self.processes.get(pid, (name, 0))[1]))

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def process_peaks_mib(self) -> dict[str, dict[str, float]]:
        """Per process name: how many processes ran and the largest peak RSS (MiB) among them."""
        out: dict[str, dict[str, float]] = {}
        for name, hwm in self.processes.values():
            row = out.setdefault(name, {"processes": 0, "max_rss_mib": 0.0})
            row["processes"] += 1
            row["max_rss_mib"] = max(row["max_rss_mib"], hwm / 2**20)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["max_rss_mib"]))

    @property
    def peak_above_baseline_gib(self) -> float:
        return (self.peak - self.baseline) / 2**30
