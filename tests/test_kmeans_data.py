"""The synthetic data generator's options and the tabular client loaders."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest

from data_gen.generate_test_data import GeneratorOptions, generate, main
from fedvq_app.config import ConfigError
from fedvq_app.data.tabular import DATA_PATH_ENV, _sklearn_table, generated_data_dir, load_tabular_partition


def _cluster_share(data, client: int) -> np.ndarray:
    _, labels = data.clients[client]
    return np.bincount(labels, minlength=data.options.num_clusters) / len(labels)


def test_cli_writes_client_files_metadata_and_centers(tmp_path, capsys):
    main(
        [
            "--num-clients",
            "3",
            "--samples-per-client",
            "40",
            "--num-features",
            "10",
            "--num-clusters",
            "4",
            "--non-iid-factor",
            "0.5",
            "--random-state",
            "7",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "client_0.npz",
        "client_1.npz",
        "client_2.npz",
        "cluster_centers.npy",
        "metadata.json",
    ]
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["config"]["random_state"] == 7 and meta["num_clusters"] == 4
    assert [c["num_samples"] for c in meta["clients"]] == [40, 40, 40]
    with np.load(tmp_path / "client_1.npz") as npz:
        assert npz["data"].shape == (40, 10) and npz["labels"].shape == (40,)
        assert np.bincount(npz["labels"], minlength=4).tolist() == meta["clients"][1]["cluster_counts"]
    assert np.load(tmp_path / "cluster_centers.npy").shape == (4, 10)
    assert "client_2: 40 rows" in capsys.readouterr().out


def test_same_random_state_same_data_other_state_other_data():
    a = generate(GeneratorOptions(num_clients=2, random_state=1))
    b = generate(GeneratorOptions(num_clients=2, random_state=1))
    c = generate(GeneratorOptions(num_clients=2, random_state=2))
    np.testing.assert_array_equal(a.clients[1][0], b.clients[1][0])
    assert not np.allclose(a.centers, c.centers)


def test_non_iid_factor_moves_from_balanced_to_one_cluster_per_client():
    iid = generate(GeneratorOptions(num_clients=3, samples_per_client=3000, num_clusters=3, non_iid_factor=0.0))
    assert all(np.allclose(_cluster_share(iid, i), 1 / 3, atol=0.04) for i in range(3))
    half = generate(GeneratorOptions(num_clients=3, samples_per_client=3000, num_clusters=3, non_iid_factor=0.5))
    assert _cluster_share(half, 1)[1] == pytest.approx(0.5 + 0.5 / 3, abs=0.04)
    full = generate(GeneratorOptions(num_clients=4, samples_per_client=50, num_clusters=3, non_iid_factor=1.0))
    assert [np.unique(full.clients[i][1]).tolist() for i in range(4)] == [[0], [1], [2], [0]]


def test_overlap_factor_controls_the_separation_of_centres():
    def closest_pair(data):
        return min(np.linalg.norm(a - b) for a, b in combinations(data.centers, 2))

    separated = generate(GeneratorOptions(num_clusters=6, cluster_std=1.0, overlap_factor=0.0, random_state=3))
    assert closest_pair(separated) >= 6.0  # 3 (1 - 0) (1 + 1)
    overlapping = generate(GeneratorOptions(num_clusters=6, overlap_factor=1.0, random_state=3))
    assert np.abs(overlapping.centers).max() <= 2.0 + 1e-9  # the box shrinks to [-2, 2]


def test_density_variation_spreads_the_cluster_stds():
    equal = generate(GeneratorOptions(num_clusters=5, cluster_std=1.5, density_variation=0.0))
    assert equal.stds.tolist() == [1.5] * 5
    varied = generate(GeneratorOptions(num_clusters=50, cluster_std=1.0, density_variation=1.0))
    assert varied.stds.min() >= 0.5 and varied.stds.max() <= 2.0 and varied.stds.std() > 0.2
    rows, labels = generate(
        GeneratorOptions(
            num_clients=1,
            samples_per_client=4000,
            num_clusters=2,
            non_iid_factor=0.0,
            density_variation=1.0,
            random_state=5,
        )
    ).clients[0]
    spread = [rows[labels == j].std(axis=0).mean() for j in range(2)]
    expected = generate(GeneratorOptions(num_clusters=2, density_variation=1.0, random_state=5)).stds
    np.testing.assert_allclose(spread, expected, rtol=0.1)


def test_bad_option_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--non-iid-factor must be in \\[0, 1\\], got 1.5"):
        main(["--non-iid-factor", "1.5", "--output-dir", str(tmp_path)])


def test_generated_folder_comes_from_config_then_env_then_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_PATH_ENV, raising=False)
    assert generated_data_dir("", "fallback") == generated_data_dir("fallback", "x")
    monkeypatch.setenv(DATA_PATH_ENV, str(tmp_path))
    assert generated_data_dir("", "fallback") == tmp_path
    assert str(generated_data_dir("configured", "fallback")) == "configured"


def test_generated_partition_loads_by_partition_id(tmp_path):
    main(["--num-clients", "2", "--samples-per-client", "30", "--output-dir", str(tmp_path)])
    part = load_tabular_partition("generated", 1, 2, data_path=str(tmp_path))
    with np.load(tmp_path / "client_1.npz") as npz:
        np.testing.assert_array_equal(part.x, npz["data"])
    assert part.num_features == 2 and part.num_classes <= 3
    with pytest.raises(ConfigError, match="client_5.npz not found"):
        load_tabular_partition("generated", 5, 6, data_path=str(tmp_path))


@pytest.mark.parametrize("source,rows", [("iris", 150), ("wine", 178), ("breast-cancer", 569)])
def test_sklearn_tables_split_into_disjoint_shares_covering_every_row(source, rows):
    parts = [load_tabular_partition(source, i, 3) for i in range(3)]
    assert sum(len(p.x) for p in parts) == rows
    pooled, table = np.vstack([p.x for p in parts]), _sklearn_table(source)[0]
    np.testing.assert_array_equal(np.unique(pooled, axis=0), np.unique(table, axis=0))  # every row exactly once
    # IID: every client sees every class (the tables are sorted by class, so this needs the shuffle)
    assert all(len(np.unique(p.labels)) == len(np.unique(parts[0].labels)) for p in parts)


def test_label_skew_split_skews_the_class_mix():
    iid = [np.bincount(load_tabular_partition("wine", i, 3).labels, minlength=3) for i in range(3)]
    skew = [
        np.bincount(load_tabular_partition("wine", i, 3, split="label-skew", skew_alpha=0.1).labels, minlength=3)
        for i in range(3)
    ]

    def dominance(counts):
        return np.mean([c.max() / c.sum() for c in counts])

    assert dominance(skew) > dominance(iid) + 0.2
