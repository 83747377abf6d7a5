"""The replay's pure parts: scores from probabilities, the lookup table of a recording, the
champion and kill counts of a study from its events, the summary and the grid's plan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import curves as bc
from bench import replay
from tests.synthetic_curves import GRID, write_recording

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> replay.Curves:
    folder = write_recording(tmp_path_factory.mktemp("curves"))
    return replay.build_curves(*bc.load_curves(folder))


def test_scores_match_hand_computed_values() -> None:
    y = np.array([1, 0, 1, 0, 0])
    p = np.array([0.9, 0.6, 0.4, 0.2, 0.5])
    # Predicted unfair (> 0.5): clauses 0 and 1; one true positive, one false positive, one
    # false negative: F1 = 2 / (2 + 2). A probability of exactly 0.5 is fair (argmax of ties).
    assert replay.f1_score(y, p) == pytest.approx(0.5)
    # Ranked 0.9 (hit), 0.6, 0.5, 0.4 (hit): AP = (1/1 + 2/4) / 2.
    assert replay.average_precision(y, p) == pytest.approx(0.75)
    assert replay.soft_f1(y, p) == pytest.approx(2 * 1.3 / (2.6 + 2))
    assert replay.f1_score(y, np.zeros(5)) == 0.0


def test_average_precision_counts_tied_scores_as_the_trial_logs_them() -> None:
    """The replay recomputes val/ap from stored probabilities; the trial logged it with
    torchmetrics. Tied probabilities (common in float16-rounded outputs) must not reorder."""
    import torch
    from torchmetrics.classification import BinaryAveragePrecision

    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.15).astype(int)
    p = np.round(rng.random(200) * 0.6 + 0.2 * y, 1)  # few distinct values: many ties
    logged = BinaryAveragePrecision()(torch.tensor(p), torch.tensor(y)).item()
    assert replay.average_precision(y, p) == pytest.approx(logged, abs=1e-6)
    assert replay.average_precision(np.zeros(4, dtype=int), np.ones(4)) == 0.0


def test_table_holds_every_configuration_with_its_recorded_seeds(table: replay.Curves) -> None:
    assert len(table.configs) == 8 and table.epochs == 3
    assert table.seeds[0] == (42, 43) and table.seeds[5] == (42,)
    # val/f1 as logged equals the F1 recomputed from the stored probabilities.
    assert np.allclose(table.table["val/f1"], table.table["val/f1_proba"])
    # Losses are negated so that every signal is higher-is-better.
    assert (table.table["val/loss"] < 0).all()
    # Realization 0 replays the first seed everywhere; others draw among recorded seeds.
    assert all(table.seed(c, 0) == 42 for c in range(8))
    drawn = {table.seed(0, r) for r in range(1, 40)}
    assert drawn == {42, 43}


def test_one_training_seed_can_be_replayed_alone(tmp_path) -> None:
    folder = write_recording(tmp_path / "curves")
    only = replay.parse_only(["seed=43"])
    assert only == {"seed": (43,)}
    # Seed 43 was recorded for two configurations only: a replay over it lacks the rest.
    with pytest.raises(ValueError, match="lacks 6 of 8"):
        replay.build_curves(*bc.load_curves(folder), only=only)
    first = replay.build_curves(*bc.load_curves(folder), only={"seed": (42,)})
    assert set(first.seeds.values()) == {(42,)}
    assert set(first.table.index.get_level_values("seed")) == {42}
    # It keeps the grid and combines with a sub-grid.
    half = replay.build_curves(*bc.load_curves(folder), only={"seed": (42,), "lora_rank": (4,)})
    assert len(first.configs) == 8 and len(half.configs) == 4


def test_a_sampled_configuration_maps_onto_the_grid(table: replay.Curves) -> None:
    sampled = {"lr": np.float64(1e-3), "lora_rank": np.int64(32), "max_length": 64,
               "batch_size": 8}
    config = table.configs[table.index(sampled)]
    assert config == {"lr": 1e-3, "lora_rank": 32, "max_length": 64, "batch_size": 8}
    # An lr that is off the grid only by formatting snaps to the nearest grid value.
    assert table.index({**sampled, "lr": 1.0000001e-3}) == table.index(sampled)


def test_champion_follows_the_best_rule_and_judge_counts_kills(table: replay.Curves) -> None:
    champ = table.champion_test(0)
    best, worst = int(np.argmax(champ)), int(np.argmin(champ))
    # The best configuration runs 1 epoch and is stopped; the worst runs to the end.
    events = [("t1", 1, worst), ("t2", 1, best), ("t1", 2, worst), ("t1", 3, worst)]
    curve = replay.champion_curve(events, table, 0)
    assert len(curve) == 4
    out = replay.judge("m", 1, events, table, budget=8, realization=0)
    assert out.trial_epochs == 4 and out.trials == 2 and out.distinct == 2
    assert out.exhaustive == pytest.approx(replay.replay_exhaustive(table, 0))
    assert out.grid_best == pytest.approx(champ.max())
    assert out.best_started == 1 and out.best_killed == 1
    # At 25% of the budget (2 trial-epochs) the champion is whichever of the two had the
    # better val/f1 after its first epoch.
    v = {c: table.table.loc[(c, 42, 1), "val/f1"] for c in (worst, best)}
    first = best if v[best] > v[worst] else worst
    assert out.champion_test[0] == pytest.approx(
        table.table.loc[(first, 42, 1), replay.FINAL])
    assert out.champion_test[2] == curve[-1]  # fewer events than the budget: the last one


def test_epochs_to_target_is_the_first_report_within_tolerance(table: replay.Curves) -> None:
    champ = table.champion_test(0)
    best = int(np.argmax(champ))
    rows = table.curve(best, 42)
    best_epoch = int(np.argmax(rows["val/f1"].to_numpy())) + 1
    events = [("t", e, best) for e in range(1, 4)]
    out = replay.judge("m", 1, events, table, budget=3, realization=0)
    assert out.epochs_to_target <= best_epoch
    never = replay.judge("m", 1, [("t", 1, int(np.argmin(champ)))], table, 3, 0)
    assert never.epochs_to_target == math.inf


def test_summary_ratios_against_the_baseline(table: replay.Curves) -> None:
    def outcome(method: str, seed: int, steps: float) -> replay.Outcome:
        return replay.Outcome(method, seed, 12, 4, 3, steps, steps + 1, [0.5, 0.6, 0.7], 0.7,
                              0.65, 2, 1, 1, 0)

    outcomes = [outcome("random", 1, 10), outcome("random", 2, 12),
                outcome("fast", 1, 4), outcome("fast", 2, 6), outcome("never", 1, math.inf),
                outcome("never", 2, math.inf)]
    summary = replay.summarize(outcomes, "random").set_index("method")
    assert summary.loc["random", "to_target_ratio"] == pytest.approx(1.0)
    assert summary.loc["fast", "to_target_ratio"] == pytest.approx(5 / 11)
    assert summary.loc["fast", "to_exhaustive_ratio"] == pytest.approx(6 / 12)
    assert summary.loc["never", "to_target_reached"] == 0.0
    assert math.isinf(summary.loc["never", "to_target"])
    assert summary.loc["fast", "top_killed"] == pytest.approx(0.5)
    assert summary.loc["fast", "test@0.5"] == pytest.approx(0.6)
    # A baseline whose median study never reached the target leaves the ratio undefined.
    slow = [outcome("random", 1, math.inf), outcome("random", 2, math.inf), *outcomes[2:4]]
    assert math.isnan(replay.summarize(slow, "random").set_index("method").loc[
        "fast", "to_target_ratio"])


def test_correlations_and_seed_noise(table: replay.Curves) -> None:
    corr = replay.correlations(table)
    assert list(corr["signal"]) == [*replay.SIGNALS, "train/loss"]
    assert list(corr.columns[1:]) == ["epoch 1", "epoch 2", "epoch 3"]
    assert corr.iloc[:, 1:].abs().le(1).all().all()
    noise = replay.seed_noise(table)
    assert noise["pairs"] == 2


def test_report_is_markdown_tables(table: replay.Curves) -> None:
    events = [("t1", e, 0) for e in (1, 2, 3)]
    out = [replay.judge(m, 1, events, table, 6, 0) for m in ("random", "optuna+asha")]
    text = replay.report(table, out, budget=6)
    assert "| random | 1 | 0.0 | 3 | 1 |" in text and "| optuna+asha | 1 |" in text
    assert "| val/ap |" in text


def test_grid_is_checked_against_the_search_space_table() -> None:
    assert bc.check_grid(GRID)["lora_rank"] == (4, 32)
    with pytest.raises(ValueError, match="not among the table's choices"):
        bc.check_grid({**GRID, "lora_rank": (4, 12)})
    with pytest.raises(ValueError, match="outside"):
        bc.check_grid({**GRID, "lr": (1e-2,)})


def test_plan_records_the_whole_grid_first_then_a_share_with_more_seeds() -> None:
    configs = bc.grid_configs(GRID)
    assert len(configs) == 8
    runs = bc.planned_runs(configs, (42, 43), share=0.25)
    assert [s for _, s in runs] == [42] * 8 + [43] * 2
    assert {bc.run_key(c, 42) for c, _ in runs[:8]} == {bc.run_key(c, 42) for c in configs}
    assert bc.run_key(configs[0], 42) == "lr3.0e-04_r4_len64_bs8_s42"


def test_methods_include_the_baseline_and_noise_aware_variants() -> None:
    assert replay.METHODS[replay.BASELINE].scheduler == "none"
    assert {m.signal for m in replay.METHODS.values()} >= {"val/f1", "val/loss", "val/ap"}
    assert replay.trials_for(replay.METHODS["random"], 12, 4) == 12
    assert replay.trials_for(replay.METHODS["optuna+asha"], 12, 4) > 12


def test_replayed_outcomes_are_kept_per_recording_not_per_folder(tmp_path) -> None:
    """Outcomes replayed over one recording are never read back for another recorded into
    the same folder (a re-recording, or a resumed one with more runs)."""
    first = replay.outcomes_path(write_recording(tmp_path / "curves", rng_seed=0), {})
    assert first == replay.outcomes_path(tmp_path / "curves", {})  # same runs, same file
    again = replay.outcomes_path(write_recording(tmp_path / "curves", rng_seed=1), {})
    assert again != first and again.name.startswith("curves-")
    assert replay.outcomes_path(tmp_path / "curves", {"seed": (42,)}).name.endswith("-seed42.jsonl")
