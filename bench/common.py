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


def emit(name: str, figures: dict) -> dict:
    """Print one JSON line and append it to ``bench/results/<name>.jsonl``."""
    record = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **figures}
    line = json.dumps(record)
    print(line, flush=True)
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / f"{name}.jsonl").open("a") as fh:
        fh.write(line + "\n")
    return record


def rounds_of(experiment_dir: Path) -> list[dict]:
    """The per-round records of an experiment folder."""
    return [json.loads(x) for x in (experiment_dir / "rounds.jsonl").read_text().splitlines()]


class MemorySampler:
    """Peak system memory in use (MemTotal - MemAvailable) while a block runs."""

    def __init__(self, interval_s: float = 0.25) -> None:
        import threading  # noqa: PLC0415

        self.interval_s = interval_s
        self.baseline = self.peak = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _used() -> int:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
        return info["MemTotal"] - info["MemAvailable"]

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._used())

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_above_baseline_gib(self) -> float:
        return (self.peak - self.baseline) / 2**30
