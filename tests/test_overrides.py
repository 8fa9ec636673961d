"""Script overrides (``key=value`` pairs): every pair survives, also several under one prefix."""

from fedvq_app.simulation import parse_overrides


def test_two_overrides_under_one_prefix_both_survive():
    # Flower's parse_config_args merges separate strings with a shallow dict update: passed one by one,
    # "fusedspace.warmup-epochs=0" replaced the whole "fusedspace" table and dropped task-aware
    parsed = parse_overrides(["fusedspace.task-aware=false", "fusedspace.warmup-epochs=0", "dataset.size=8"])
    assert parsed == {"fusedspace.task-aware": False, "fusedspace.warmup-epochs": 0, "dataset.size": 8}
    assert parse_overrides(["fusedspace.task-aware=false fusedspace.l2sp=0.001"]) == {
        "fusedspace.task-aware": False,
        "fusedspace.l2sp": 0.001,
    }
