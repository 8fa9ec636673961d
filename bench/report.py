"""Write BENCHMARKS.md from the newest record of each benchmark in bench/results/.

Only measured figures appear: a benchmark without a record says so, and every
target is printed next to its figure with "met" or "MISSED".

    python bench/report.py            # rewrites BENCHMARKS.md
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def latest(name: str) -> list[dict]:
    """Records of the newest date of benchmark ``name`` (scale writes one per size)."""
    path = RESULTS / f"{name}.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if not records:
        return []
    day = records[-1]["date"][:10]
    newest_run = [r for r in records if r["date"][:10] == day]
    if name in ("methods", "reproduce"):  # one record per cell; a --quick smoke test does not replace the full table
        full = [r for r in records if not r["setup"]["quick"]]
        return [(full or records)[-1]]
    return newest_run if name == "scale" else [records[-1]]


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def machine_line(record: dict) -> str:
    m = record["machine"]
    gpu = m.get("cuda") or "no GPU"
    return (f"Measured {record['date']} on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {gpu}; "
            f"Python {m['python']}, torch {m['torch']}, flwr {m['flwr']}.")


def codebook_section(records: list[dict]) -> list[str]:
    r = records[0]
    lines = [machine_line(r), "", "| case | aggregator | seconds | inertia | speed-up vs seed | inertia ratio |",
             "|---|---|---|---|---|---|"]
    for case in r["cases"]:
        for agg in case["aggregators"]:
            lines.append(f"| {case['case']} | {agg['name']} | {agg['seconds']:.3f} | {agg['inertia']:.4g} | "
                         f"{agg.get('speedup', float('nan')):.1f}x | {agg.get('inertia_ratio', float('nan')):.3f} |")
    target = r.get("target", {})
    lines += ["", f"Target: default aggregator `{target.get('aggregator')}` >= 100x faster than the seed's "
              f"`KMeans(n_init=10)` at <= 1.0x its inertia, in every case: {verdict(r.get('target_met', False))}."]
    return lines


def fed_kmeans_section(records: list[dict]) -> list[str]:
    r = records[0]
    lines = [machine_line(r), "", "| scenario | ARI fed. / central. | ratio | inertia fed. / central. | "
             "rounds fed. / Lloyd iterations | bytes sent per client |", "|---|---|---|---|---|---|"]
    for s in r["scenarios"]:
        ratio = s["ari_ratio"]
        lines.append(f"| {s['scenario']} | {s['ari_fed']:.4f} / {s['ari_central']:.4f} | "
                     f"{ratio:.3f} | {s['inertia_fed']:.1f} / {s['inertia_central']:.1f} | "
                     f"{s['rounds_fed']}{'' if s['converged'] else ' (not converged)'} / {s['iterations_central']} | "
                     f"{s['bytes_per_client']:,.0f} |")
    met_ari = sum(1 for s in r["scenarios"] if s["ari_ratio"] is not None and s["ari_ratio"] >= 0.99)
    met_rounds = sum(1 for s in r["scenarios"] if s["rounds_ratio"] <= 1.5)
    n = len(r["scenarios"])
    lines += ["", f"Target ARI >= 0.99 x centralized: {met_ari}/{n} scenarios, lowest ratio {r['min_ari_ratio']:.3f} "
              f"({verdict(met_ari == n)}). Target rounds <= 1.5 x Lloyd iterations: {met_rounds}/{n} scenarios, "
              f"highest ratio {r['max_rounds_ratio']:.1f} ({verdict(met_rounds == n)})."]
    return lines


def overhead_section(records: list[dict]) -> list[str]:
    r = records[0]
    lines = [machine_line(r), "", f"FedAvg, digits, {r['clients']} clients, {r['rounds']} rounds, "
             f"{r['local_epochs']} local epoch(s). Plain in-process PyTorch loop: "
             f"{r['plain_per_round_s']:.2f} s per round (after round 1).", "",
             "| Flower setting | s per round | ratio to plain | start-up s | total s |", "|---|---|---|---|---|"]
    for label, f in r["flower"].items():
        lines.append(f"| {label} | {f['steady_per_round_s']:.2f} | {f['ratio_to_plain']:.2f} | "
                     f"{f['startup_s']:.1f} | {f['total_s']:.1f} |")
    lines += ["", f"Best setting: {r['best_setting']} (ratio {r['best_ratio']:.2f}). Target per-round ratio <= 1.2: "
              f"{verdict(r['best_ratio'] <= 1.2)}."]
    return lines


def scale_section(records: list[dict]) -> list[str]:
    lines = [machine_line(records[0]), "", "| clients | completed | s per round | peak memory GiB | MiB per client |",
             "|---|---|---|---|---|"]
    for r in records:
        spr = f"{r['steady_per_round_s']:.1f}" if r["steady_per_round_s"] else "-"
        lines.append(f"| {r['clients']} | {r['completed']} | {spr} | {r['peak_memory_gib']:.2f} | "
                     f"{r['memory_per_client_mib']:.0f} |")
    hundred = [r for r in records if r["clients"] >= 100]
    lines += ["", f"Target: 100 clients complete without running out of memory: "
              f"{verdict(bool(hundred) and all(r['completed'] for r in hundred))}."]
    return lines


def methods_section(records: list[dict]) -> list[str]:
    """methods.md holds the table (built by bench/methods.py from all its cells); the machine of its newest cell."""
    r = records[0]
    table = (RESULTS / "methods.md").read_text() if (RESULTS / "methods.md").is_file() else ""
    return [machine_line(r), "", table.strip(), "", "![accuracy per scenario](bench/results/methods.png)"]


def reproduce_section(records: list[dict]) -> list[str]:
    """reproduce.md holds the 3-seed table (built by bench/reproduce.py from its cells); the machine of its newest."""
    r = records[0]
    table = (RESULTS / "reproduce.md").read_text() if (RESULTS / "reproduce.md").is_file() else ""
    chart = "![accuracy, mean and spread over seeds](bench/results/reproduce.png)"
    return [machine_line(r), "", table.strip(), "", chart]


SECTIONS: dict[str, tuple[str, str, Callable[[list[dict]], list[str]]]] = {
    "codebook_aggregation": ("Codebook aggregation", "python bench/codebook_aggregation.py", codebook_section),
    "fed_kmeans": ("Federated vs centralized k-means", "python bench/fed_kmeans.py", fed_kmeans_section),
    "overhead": ("Flower overhead per round", "python bench/overhead.py", overhead_section),
    "scale": ("Scale: virtual clients on one machine", "python bench/scale.py", scale_section),
    "methods": ("Methods on digits", "python bench/methods.py", methods_section),
    "reproduce": ("Reproduction grid: every method x the seeds' scenarios x 3 seeds", "python bench/reproduce.py",
                  reproduce_section),
}


def render() -> str:
    out = ["# Benchmarks", "",
           "Figures below are rendered by `python bench/report.py` from the newest record of each script in "
           "`bench/results/*.jsonl`; nothing here is typed by hand. Every script prints one JSON line and appends "
           "it to its results file; `--quick` runs a smoke-test size. Benchmarks are not part of the test suite.", ""]
    for name, (title, command, section) in SECTIONS.items():
        out += [f"## {title}", "", f"Run: `{command}`", ""]
        records = latest(name)
        out += section(records) if records else ["Not measured yet."]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    (ROOT / "BENCHMARKS.md").write_text(render())
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")
