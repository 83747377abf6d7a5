"""tune.repeats.SkipRepeats around a real OptunaSearch, driven as Tune drives a searcher."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit

SPACE_LR = (1e-4, 1e-3, 1e-2)
SPACE_RANK = (4, 8)
SPACE_SIZE = len(SPACE_LR) * len(SPACE_RANK)


def _optuna(points=None, seed=0, startup=2):
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed,
                                                                n_startup_trials=startup),
                            points_to_evaluate=points)
    space = {"lr": tune.choice(list(SPACE_LR)), "lora_rank": tune.choice(list(SPACE_RANK))}
    return searcher, space


def _wrapped(points=None, seed=0, space_size=SPACE_SIZE):
    from tune.repeats import SkipRepeats

    inner, space = _optuna(points, seed)
    searcher = SkipRepeats(inner, space_size=space_size)
    assert searcher.set_search_properties("val/ap", "max", space)
    return searcher, inner


def score(config):
    """A deterministic objective: what a seeded trial of `config` reports."""
    return config["lr"] * 100 + config["lora_rank"] / 100


def _run_sequentially(searcher, trials):
    """Tune's loop with one trial at a time: ask, train, tell; the configurations trained."""
    from ray.tune.search import Searcher

    trained = []
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        assert config is not None
        trained.append(config)
        searcher.on_trial_complete(f"t{i}", result={"val/ap": score(config)})
    return trained


def test_plain_tpe_repeats_configurations_on_a_space_of_choices():
    """The problem the wrapper solves, on the same seeds the next test uses."""
    inner, space = _optuna(seed=0)
    inner.set_search_properties("val/ap", "max", space)
    trained = _run_sequentially(inner, 12)
    assert len({(c["lr"], c["lora_rank"]) for c in trained}) < len(trained)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_configuration_trains_once_and_the_search_ends_when_all_were_tried(seed):
    import optuna

    searcher, inner = _wrapped(seed=seed)
    trained = _run_sequentially(searcher, 12)
    keys = [(c["lr"], c["lora_rank"]) for c in trained]
    assert len(keys) == len(set(keys)) == 6  # every configuration, once, then FINISHED
    # Every repeat TPE proposed was told the value its earlier trial reported.
    trials = inner._ot_study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(trials) == 6 + searcher.answered
    for t in trials:
        assert t.value == pytest.approx(score(t.params))
    assert searcher.answered > 0


def test_a_repeat_of_a_running_trial_waits_for_it_and_takes_its_result():
    import optuna

    a, b = {"lr": 1e-3, "lora_rank": 4}, {"lr": 1e-2, "lora_rank": 8}
    searcher, inner = _wrapped(points=[a, a, b])
    assert searcher.suggest("t0") == a
    assert searcher.suggest("t1") is None  # A again, while t0 trains: no trial starts
    asked = len(inner._ot_study.trials)
    assert searcher.suggest("t2") is None and len(inner._ot_study.trials) == asked
    searcher.on_trial_result("t0", {"val/ap": 0.3, "training_iteration": 1})
    searcher.on_trial_complete("t0", result={"val/ap": 0.4, "training_iteration": 2})
    assert searcher.suggest("t3") == b
    done = inner._ot_study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert [(t.params, t.value) for t in done] == [(a, 0.4), (a, 0.4)]
    assert searcher.answered == 1


def test_a_repeat_of_a_failed_trial_trains():
    a = {"lr": 1e-3, "lora_rank": 4}
    searcher, _ = _wrapped(points=[a, a])
    assert searcher.suggest("t0") == a
    assert searcher.suggest("t1") is None
    searcher.on_trial_complete("t0", error=True)
    assert searcher.suggest("t2") == a
    assert searcher.answered == 0


def test_a_restored_searcher_still_knows_what_was_tried(tmp_path):
    from tune.repeats import SkipRepeats

    searcher, _ = _wrapped(seed=3)
    first = _run_sequentially(searcher, 3)
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    inner, space = _optuna(seed=3)
    restored = SkipRepeats(inner, space_size=SPACE_SIZE)
    restored.set_search_properties("val/ap", "max", space)
    restored.restore(str(path))
    rest = _run_sequentially(restored, 12)
    keys = [(c["lr"], c["lora_rank"]) for c in first + rest]
    assert len(keys) == len(set(keys)) == 6


def test_trials_to_run_is_the_space_size_when_smaller_and_repeats_are_skipped():
    from tune.study import StudyConfig

    grid = StudyConfig.from_dict({"num_trials": 30, "lrs": (1e-4, 1e-3), "lora_ranks": (4, 8),
                                  "max_lengths": (64,), "batch_sizes": (16,)})
    assert grid.space_size == 4 and grid.trials_to_run == 4
    assert grid.replace(skip_repeats=False).trials_to_run == 30
    assert grid.replace(search="random").trials_to_run == 30
    assert grid.replace(num_trials=3).trials_to_run == 3
    assert StudyConfig(num_trials=30).space_size is None  # lr is a range
    assert StudyConfig(num_trials=30).trials_to_run == 30


def test_an_answered_repeat_gets_the_earlier_result_s_numbers_whatever_their_type(tmp_path):
    import numpy as np
    import optuna

    a, b = {"lr": 1e-3, "lora_rank": 4}, {"lr": 1e-2, "lora_rank": 8}
    searcher, inner = _wrapped(points=[a, a, b])
    assert searcher.suggest("t0") == a
    searcher.on_trial_complete("t0", result={"val/ap": np.float32(0.25), "config": {"x": 1}})
    path = tmp_path / "searcher.json"
    searcher.save(str(path))  # JSON: the nested config is left out, the numpy float kept
    assert searcher.suggest("t1") == b
    done = inner._ot_study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert [t.value for t in done] == [0.25, 0.25]


@pytest.mark.parametrize("skip_repeats", [True, False])
def test_a_trial_that_ended_after_the_last_snapshot_runs_again_without_ending_the_study(
        skip_repeats, tmp_path):
    """The driver killed within Ray's snapshot period of a trial's end: the resumed study runs
    that trial again from its checkpoint, while Optuna's sqlite study (the driver's storage)
    already recorded its end. Its results are then not told again, and nothing raises."""
    import optuna
    from ray import tune

    from tune.optuna_search import ResumableOptunaSearch
    from tune.repeats import SkipRepeats

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"lr": tune.choice(list(SPACE_LR)), "lora_rank": tune.choice(list(SPACE_RANK))}
    url = f"sqlite:///{tmp_path / 'optuna.db'}"

    def searcher():
        inner = ResumableOptunaSearch(sampler=optuna.samplers.TPESampler(seed=0),
                                      study_name="s", storage=optuna.storages.RDBStorage(url))
        wrapped = SkipRepeats(inner, space_size=SPACE_SIZE) if skip_repeats else inner
        assert wrapped.set_search_properties("val/ap", "max", space)
        return wrapped

    first = searcher()
    config = first.suggest("t0")
    first.on_trial_result("t0", {"val/ap": score(config), "training_iteration": 1})
    first.save(str(tmp_path / "snapshot"))  # Ray's last snapshot: t0 still running
    first.on_trial_complete("t0", result={"val/ap": score(config), "training_iteration": 2})

    resumed = searcher()
    resumed.restore(str(tmp_path / "snapshot"))
    resumed.on_trial_result("t0", {"val/ap": score(config), "training_iteration": 2})
    resumed.on_trial_complete("t0", result={"val/ap": score(config), "training_iteration": 2})
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE]
    assert trials[0].value == pytest.approx(score(config))
    assert resumed.suggest("t1") is not None  # the study goes on
