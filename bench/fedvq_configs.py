"""FedVQ configurations against FedAvg, several seeds, in process: the issue-13 done-when tables.

Every cell is one whole federated job (the real ServerApp and ClientApp on the
in-process grid, ``run_local``) from a base conf file plus one named configuration's
overrides; FedAvg runs from the same base (its method-specific keys are ignored by
FedAvg only where they belong to FedVQ's sections, which it never reads). Figures per
cell from ``summary.json``: final mean global-test accuracy, final mean
own-distribution test accuracy (``final.own_test_accuracy``: test rows drawn to each
client's label mix, or its own rotation domain), and for FedVQ the federation-wide
codes used / K and the perplexity of the pooled code counts in the last round.

    python bench/fedvq_configs.py --scenario dirichlet --seeds 42,7,123
    python bench/fedvq_configs.py --scenario domains --configs fedavg,ema-warmup --seeds 42
    python bench/fedvq_configs.py --scenario readme --configs defaults --seeds 42   # README setting in process
    python bench/fedvq_configs.py --table          # rebuild bench/results/fedvq_configs.md only

Each cell appends one JSON line to ``bench/results/fedvq_configs.jsonl``; the table
(mean +- standard deviation over seeds, newest record per (scenario, config, seed))
is rebuilt after every cell.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, emit  # noqa: E402
from fedvq_app.client_app import app as client_app  # noqa: E402
from fedvq_app.local_grid import full_run_config, run_local  # noqa: E402
from fedvq_app.server_app import app as server_app  # noqa: E402

NAME = "fedvq_configs"
ROOT = Path(__file__).resolve().parent.parent

#: scenario -> (base conf file, number of clients, extra overrides of the base)
SCENARIOS = {
    # digits 16x16, Dirichlet 0.5, 10 clients, Adam 0.003, 10 rounds x 2 local epochs
    "dirichlet": ("conf/fedvq_digits.toml", 10, {"eval-every": 5}),
    # UEFL's 3 rotation domains (0 / -50 / 120 degrees), 9 clients, labels IID, digits 16x16
    "domains": (
        "conf/fedvq_digits_3domains.toml",
        9,
        {"train.optimizer": "adam", "train.lr": 0.003, "num-server-rounds": 10, "eval-every": 5},
    ),
    # the README's flwr run in process: pyproject defaults (digits 28x28, Dirichlet 0.5, SGD 0.05 momentum 0.9,
    # 15 rounds x 2 local epochs), 10 clients; bench/fedvq_flwr_run.py runs the real command
    "readme": (None, 10, {"eval-every": 5}),
}

#: every named configuration (not "defaults*") states its changes against these settings, the fedvq
#: defaults before issue 13's second pass, so the rows measured then keep their meaning
PINNED = {
    "fedvq.heads": 1,
    "fedvq.best-val": True,
    "fedvq.recalibrate-bn": False,
    "codebook.max-revived": -1,
    "fedvq.grad-clip": 0.0,
    "fedvq.rotation-trick": True,
}

EMA_SHARED_LLOYD = {"fedvq.quantizer": "ema", "fedvq.encoder": "shared", "codebook.aggregation": "lloyd"}

#: name -> overrides; "fedavg" is the baseline, "defaults" the pyproject's fedvq defaults (the base conf's
#: fedvq keys dropped), "defaults-<x>" those with one change. The defaults' gradient through the ema quantizer
#: became straight-through on 2026-12-01 (fedvq.rotation-trick = false); the "defaults*" records measured
#: before carry the rotation trick in their name ("defaults-rotation*", relabelled with a note)
CONFIGS = {
    "fedavg": {"method": "fedavg"},
    "gumbel-private-usage-kmeans": {
        "fedvq.quantizer": "gumbel",
        "fedvq.encoder": "private",
        "codebook.aggregation": "usage-kmeans",
    },
    "st-shared-mean": {
        "fedvq.quantizer": "straight-through",
        "fedvq.encoder": "shared",
        "codebook.aggregation": "mean",
    },
    "ema-private-lloyd": {"fedvq.quantizer": "ema", "fedvq.encoder": "private", "codebook.aggregation": "lloyd"},
    "ema-shared-lloyd": {"fedvq.quantizer": "ema", "fedvq.encoder": "shared", "codebook.aggregation": "lloyd"},
    "ema-warmup5-lloyd": {
        "fedvq.quantizer": "ema",
        "fedvq.encoder": "warmup",
        "fedvq.shared-encoder-rounds": 5,
        "codebook.aggregation": "lloyd",
    },
    "ema-warmup8-lloyd": {
        "fedvq.quantizer": "ema",
        "fedvq.encoder": "warmup",
        "fedvq.shared-encoder-rounds": 8,
        "codebook.aggregation": "lloyd",
    },
    "st-warmup5-mean": {
        "fedvq.quantizer": "straight-through",
        "fedvq.encoder": "warmup",
        "fedvq.shared-encoder-rounds": 5,
        "codebook.aggregation": "mean",
    },
    # issue 13, second pass: revival limited, multi-head VQ, the flatten head
    "ema-shared-lloyd-norevive": {**EMA_SHARED_LLOYD, "codebook.max-revived": 0},
    "ema-shared-lloyd-revive3": {**EMA_SHARED_LLOYD, "codebook.revive-after": 3, "codebook.max-revived": 4},
    "ema-shared-mean": {**EMA_SHARED_LLOYD, "codebook.aggregation": "mean"},
    "ema4-shared-lloyd": {**EMA_SHARED_LLOYD, "fedvq.heads": 4},
    "ema4-shared-lloyd-norevive": {**EMA_SHARED_LLOYD, "fedvq.heads": 4, "codebook.max-revived": 0},
    "ema8-shared-lloyd-norevive": {**EMA_SHARED_LLOYD, "fedvq.heads": 8, "codebook.max-revived": 0},
    "ema8-shared-mean": {**EMA_SHARED_LLOYD, "fedvq.heads": 8, "codebook.aggregation": "mean"},
    "st-shared-mean-flatten": {
        "fedvq.quantizer": "straight-through",
        "fedvq.encoder": "shared",
        "codebook.aggregation": "mean",
        "fedvq.head": "flatten",
    },
    "ema-shared-lloyd-norevive-flatten": {**EMA_SHARED_LLOYD, "codebook.max-revived": 0, "fedvq.head": "flatten"},
    "ema8-shared-lloyd-norevive-flatten": {
        **EMA_SHARED_LLOYD,
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.head": "flatten",
    },
    "ema-shared-lloyd-norevive-gn": {**EMA_SHARED_LLOYD, "codebook.max-revived": 0, "fedvq.decoder-norm": "group"},
    "ema8-shared-lloyd-norevive-gn": {
        **EMA_SHARED_LLOYD,
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.decoder-norm": "group",
    },
    "ema8-shared-lloyd-gn": {**EMA_SHARED_LLOYD, "fedvq.heads": 8, "fedvq.decoder-norm": "group"},
    "ema8-shared-mean-gn": {
        **EMA_SHARED_LLOYD,
        "fedvq.heads": 8,
        "codebook.aggregation": "mean",
        "fedvq.decoder-norm": "group",
    },
    "st-shared-mean-gn": {
        "fedvq.quantizer": "straight-through",
        "fedvq.encoder": "shared",
        "codebook.aggregation": "mean",
        "fedvq.decoder-norm": "group",
    },
    "ema8-private-lloyd-norevive-gn": {
        **EMA_SHARED_LLOYD,
        "fedvq.encoder": "private",
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.decoder-norm": "group",
    },
    "ema8-warmup5-lloyd-norevive-gn": {
        **EMA_SHARED_LLOYD,
        "fedvq.encoder": "warmup",
        "fedvq.shared-encoder-rounds": 5,
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.decoder-norm": "group",
    },
    "ema8-shared-lloyd-norevive-bn": {
        **EMA_SHARED_LLOYD,
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.recalibrate-bn": True,
    },
    "ema-shared-lloyd-norevive-bn": {**EMA_SHARED_LLOYD, "codebook.max-revived": 0, "fedvq.recalibrate-bn": True},
    "ema8-shared-lloyd-bn": {**EMA_SHARED_LLOYD, "fedvq.heads": 8, "fedvq.recalibrate-bn": True},
    "st-shared-mean-bn": {
        "fedvq.quantizer": "straight-through",
        "fedvq.encoder": "shared",
        "codebook.aggregation": "mean",
        "fedvq.recalibrate-bn": True,
    },
    "ema8-private-lloyd-norevive-bn": {
        **EMA_SHARED_LLOYD,
        "fedvq.encoder": "private",
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.recalibrate-bn": True,
    },
    "ema8-warmup5-lloyd-norevive-bn": {
        **EMA_SHARED_LLOYD,
        "fedvq.encoder": "warmup",
        "fedvq.shared-encoder-rounds": 5,
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.recalibrate-bn": True,
    },
    "ema8-private-lloyd-bn": {
        **EMA_SHARED_LLOYD,
        "fedvq.encoder": "private",
        "fedvq.heads": 8,
        "fedvq.recalibrate-bn": True,
    },
    "ema8-warmup5-lloyd-bn": {
        **EMA_SHARED_LLOYD,
        "fedvq.encoder": "warmup",
        "fedvq.shared-encoder-rounds": 5,
        "fedvq.heads": 8,
        "fedvq.recalibrate-bn": True,
    },
    "ema8-shared-lloyd-norevive-bn-last": {
        **EMA_SHARED_LLOYD,
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.recalibrate-bn": True,
        "fedvq.best-val": False,
    },
    "ema8-shared-lloyd-bn-last": {
        **EMA_SHARED_LLOYD,
        "fedvq.heads": 8,
        "fedvq.recalibrate-bn": True,
        "fedvq.best-val": False,
    },
    "ema8-private-lloyd-norevive-bn-last": {
        **EMA_SHARED_LLOYD,
        "fedvq.encoder": "private",
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.recalibrate-bn": True,
        "fedvq.best-val": False,
    },
    "ema8-warmup5-lloyd-norevive-bn-last": {
        **EMA_SHARED_LLOYD,
        "fedvq.encoder": "warmup",
        "fedvq.shared-encoder-rounds": 5,
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.recalibrate-bn": True,
        "fedvq.best-val": False,
    },
    "ema8-shared-lloyd-norevive-bn-last-flatten": {
        **EMA_SHARED_LLOYD,
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.recalibrate-bn": True,
        "fedvq.best-val": False,
        "fedvq.head": "flatten",
    },
    "ema8-shared-lloyd-norevive-bn-last-clip": {
        **EMA_SHARED_LLOYD,
        "fedvq.heads": 8,
        "codebook.max-revived": 0,
        "fedvq.recalibrate-bn": True,
        "fedvq.best-val": False,
        "fedvq.grad-clip": 1.0,
    },
    "defaults": {},
    "defaults-private": {"fedvq.encoder": "private"},
    "defaults-flatten": {"fedvq.head": "flatten"},
    "defaults-norecal": {"fedvq.recalibrate-bn": False},
    "defaults-warmup5": {"fedvq.encoder": "warmup", "fedvq.shared-encoder-rounds": 5},
    # issue 13, third pass: the gradient through the ema quantizer (the library's rotation trick or straight-through)
    "defaults-rotation": {"fedvq.rotation-trick": True},
    "defaults-ste": {"fedvq.rotation-trick": False},
    # the second pass's defaults-<x> rows, measured when the rotation trick was the default (relabelled records)
    "defaults-rotation-private": {"fedvq.rotation-trick": True, "fedvq.encoder": "private"},
    "defaults-rotation-flatten": {"fedvq.rotation-trick": True, "fedvq.head": "flatten"},
    "defaults-rotation-norecal": {"fedvq.rotation-trick": True, "fedvq.recalibrate-bn": False},
}
FEDVQ_SECTIONS = ("fedvq.", "codebook.")


def run_config_of(scenario: str, config: str, seed: int, log_dir: Path) -> tuple[dict, int, str]:
    conf, clients, extra = SCENARIOS[scenario]
    base = {**(tomllib.loads((ROOT / conf).read_text()) if conf else {"method": "fedvq"}), **extra}
    if config.startswith("defaults"):  # the pyproject's fedvq defaults: no fedvq key of the base conf survives
        base = {k: v for k, v in base.items() if not k.startswith(FEDVQ_SECTIONS)}
    pinned = {} if config.startswith("defaults") else PINNED
    overrides = {**base, **pinned, **CONFIGS[config], "seed": seed}
    if overrides["method"] != "fedvq":
        overrides = {k: v for k, v in overrides.items() if not k.startswith(FEDVQ_SECTIONS)}
    name = f"{scenario}_{config}_seed{seed}"
    overrides.update(
        {"log-dir": str(log_dir), "experiment-name": name, "fedvq.save-checkpoints": False}
        if overrides["method"] == "fedvq"
        else {"log-dir": str(log_dir), "experiment-name": name}
    )
    return full_run_config(**overrides), clients, name


def cell(scenario: str, config: str, seed: int, log_dir: Path) -> dict:
    run_config, clients, name = run_config_of(scenario, config, seed, log_dir)
    if (log_dir / name).exists():  # the run would refuse the folder and the old summary.json be read back
        raise SystemExit(f"experiment folder {log_dir / name} exists already: move it away or pass --log-dir")
    started = time.time()
    run_local(server_app, client_app, clients, run_config)
    seconds = time.time() - started
    summary = json.loads((log_dir / name / "summary.json").read_text())
    final, report = summary["final"], summary.get("fedvq", {})
    return {
        "scenario": scenario,
        "config": config,
        "seed": seed,
        "rounds": run_config["num-server-rounds"],
        "local_epochs": run_config["train.local-epochs"],
        "clients": clients,
        "final_accuracy": final.get("accuracy"),
        "final_own_test_accuracy": final.get("own_test_accuracy"),
        "final_val_accuracy": final.get("val_accuracy"),
        "min_client_accuracy": final.get("min_client_accuracy"),
        "codes_used": report.get("final_codes_used"),
        "codebook_size": report.get("codebook_shape", [None])[0],
        "perplexity": report.get("final_perplexity"),
        "job_seconds": seconds,
        "experiment_dir": str(log_dir / name),
    }


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def write_table() -> Path:
    """bench/results/fedvq_configs.md: per scenario, mean ± sd over seeds of the newest record per cell."""
    path = RESULTS / f"{NAME}.jsonl"
    newest: dict[tuple[str, str, int], dict] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        r = json.loads(line)
        newest[(r["scenario"], r["config"], r["seed"])] = r
    lines = [
        "# FedVQ configurations vs FedAvg (`python bench/fedvq_configs.py`)",
        "",
        "Mean ± standard deviation over seeds of the final-round mean over clients. `global` = global test "
        "set, `own` = each client's own-distribution test rows (label mix; own rotation domain). "
        "`val` = each client's local validation split (what configurations are chosen on). "
        "`codes/K` and `perplexity`: federation-wide, last round.",
        "",
    ]
    for scenario in SCENARIOS:
        cells = {k: v for k, v in newest.items() if k[0] == scenario}
        if not cells:
            continue
        any_cell = next(iter(cells.values()))
        lines += [
            f"## {scenario}: {any_cell['clients']} clients, {any_cell['rounds']} rounds x "
            f"{any_cell['local_epochs']} local epochs (base `{SCENARIOS[scenario][0] or 'pyproject defaults'}`)",
            "",
            "| configuration | seeds | global acc | own acc | val acc | codes used / K | perplexity |",
            "|---|---|---|---|---|---|---|",
        ]
        for config in CONFIGS:
            rows = [v for k, v in sorted(cells.items()) if k[1] == config]
            if not rows:
                continue
            used = [r["codes_used"] for r in rows if r["codes_used"] is not None]
            codes = f"{statistics.mean(used):.1f} / {rows[0]['codebook_size']}" if used else "-"
            perp = _mean_sd([r["perplexity"] for r in rows]) if used else "-"
            lines.append(
                f"| `{config}` | {','.join(str(r['seed']) for r in rows)} | "
                f"{_mean_sd([r['final_accuracy'] for r in rows])} | "
                f"{_mean_sd([r['final_own_test_accuracy'] for r in rows])} | "
                f"{_mean_sd([r.get('final_val_accuracy') for r in rows])} | {codes} | {perp} |"
            )
        dates = sorted(r["date"] for r in cells.values())
        lines += ["", f"Measured {dates[0]} to {dates[-1]} (2 shared CPU cores, other jobs running).", ""]
    out = RESULTS / f"{NAME}.md"
    out.write_text("\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), default="dirichlet")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--seeds", default="42,7,123")
    parser.add_argument("--log-dir", default=str(ROOT / "logs" / "bench_fedvq_configs"))
    parser.add_argument("--table", action="store_true", help="only rebuild the table")
    args = parser.parse_args()
    if args.table:
        print(write_table())
        return
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configurations {unknown}; allowed {sorted(CONFIGS)}")
    log_dir = Path(args.log_dir).resolve()
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        for config in configs:
            emit(NAME, cell(args.scenario, config, seed, log_dir))
            write_table()


if __name__ == "__main__":
    main()
