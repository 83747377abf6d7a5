"""Study config, search space and CLI parsing of the tuning driver (no Ray started)."""

from __future__ import annotations

import pytest

from trainable.config import DEMO_DATA, TrialConfig
from trainable.errors import UserError
from tune.run import SMOKE_STUDY, parse_args
from tune.space import DEFAULT_SEARCHED as SEARCHED
from tune.space import search_space, space_section, trial_config
from tune.study import StudyConfig

pytestmark = pytest.mark.unit


def test_defaults_are_valid_and_sized_to_the_budget():
    study = StudyConfig()
    assert study.num_trials >= study.max_concurrent >= 1
    assert 2 <= study.n_startup_trials <= 10
    assert StudyConfig(num_trials=60).n_startup_trials == 10
    assert StudyConfig(num_trials=3).n_startup_trials == 2
    assert StudyConfig(num_trials=8, startup_trials=5).n_startup_trials == 5


@pytest.mark.parametrize(
    "changes, culprit",
    [
        ({"lr_min": 1e-3, "lr_max": 1e-4}, "lr_min"),
        ({"lr_min": 1e-3, "lr_max": 1e-3}, "empty or reversed"),
        ({"lr_min": 0.0}, "positive"),
        ({"lr_min": -1.0}, "positive"),
        ({"lrs": (1e-3,), "lr_min": 1e-4}, "leave out lr_min and lr_max"),
        ({"lrs": (1e-3, 0.0)}, "lrs: every choice must be positive"),
        ({"lrs": (1e-3, "fast")}, "lrs: 'fast' is not a number"),
        ({"lrs": ()}, "lrs must be a non-empty list"),
        ({"lora_ranks": ()}, "lora_ranks"),
        ({"lora_ranks": (8, 0)}, "lora_ranks"),
        ({"lora_ranks": (8, 8)}, "twice"),
        ({"max_lengths": (64, 2)}, "max_lengths"),
        ({"batch_sizes": (16, "32")}, "batch_sizes"),
        ({"batch_sizes": (16, True)}, "batch_sizes"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"num_trials": 0}, "num_trials"),
        ({"cpus_per_trial": 0}, "cpus_per_trial"),
        ({"gpus_per_trial": -0.5}, "gpus_per_trial"),
        ({"gpus_per_trial": 1.5}, "gpus_per_trial"),
        ({"workers_per_trial": 0}, "workers_per_trial"),
        ({"reduction_factor": 1.0}, "reduction_factor"),
        ({"grace_period": 0}, "grace_period"),
        ({"checkpoints_per_trial": 0}, "checkpoints_per_trial"),
        ({"max_failures": -1}, "max_failures"),
        ({"search": "grid"}, "search"),
        ({"scheduler": "pbt"}, "scheduler"),
        ({"search_metric": "val/accuracy"}, "search_metric"),
        ({"skip_repeats": "yes"}, "skip_repeats"),
        ({"name": "../escape"}, "study name"),
        ({"name": ""}, "study name"),
        ({"searched": ("lr", "dropout")}, "searched"),
        ({"lora_target_presets": ("attention", "all")}, "lora_target_presets: 'all'"),
        ({"class_weightings": ("inverse",)}, "class_weightings: 'inverse'"),
        ({"class_weightings": ("none", "none")}, "twice"),
        ({"lora_dropout_max": 1.0}, "lora_dropout_max must be below 1"),
        ({"lora_dropout_min": -0.1}, "lora_dropout_min"),
        ({"warmup_ratio_max": 1.5}, "warmup_ratio_max"),
        ({"weight_decay_min": 0.0}, "positive"),
        ({"lora_alpha_ratio_min": 4.0, "lora_alpha_ratio_max": 2.0}, "lora_alpha_ratio_min"),
    ],
)
def test_bad_study_values_are_one_line_errors_naming_the_culprit(changes, culprit):
    with pytest.raises(UserError) as err:
        StudyConfig().replace(**changes)
    message = str(err.value)
    assert culprit in message
    assert "\n" not in message


def test_unknown_field_is_rejected():
    with pytest.raises(UserError, match="unknown study config field"):
        StudyConfig().replace(learning_rate=1e-3)


def test_asha_grace_period_defaults_to_a_quarter_of_the_epochs():
    assert [StudyConfig().grace_epochs(e) for e in (1, 3, 4, 8, 10, 20)] == [1, 1, 1, 2, 2, 5]
    assert StudyConfig(grace_period=3).grace_epochs(10) == 3
    assert StudyConfig(grace_period=3).grace_epochs(2) == 2


def test_fractional_and_whole_gpus_are_accepted():
    assert StudyConfig(gpus_per_trial=0.5).gpus_per_trial == 0.5
    assert StudyConfig(gpus_per_trial=2).gpus_per_trial == 2


def test_search_space_is_a_pure_function_of_the_study():
    study = StudyConfig.from_dict(dict(lr_min=2e-4, lr_max=2e-3, lora_ranks=(4, 16),
                                       max_lengths=(64,), batch_sizes=(8, 32)))
    space = search_space(study)
    assert set(space) == set(SEARCHED)
    assert (space["lr"].lower, space["lr"].upper) == (2e-4, 2e-3)
    assert "LogUniform" in type(space["lr"].get_sampler()).__name__
    assert list(space["lora_rank"].categories) == [4, 16]
    assert list(space["max_length"].categories) == [64]
    assert list(space["batch_size"].categories) == [8, 32]
    # Same input, same output; the study is not modified.
    again = search_space(study)
    assert (again["lr"].lower, again["lr"].upper) == (space["lr"].lower, space["lr"].upper)
    assert study == StudyConfig.from_dict(dict(lr_min=2e-4, lr_max=2e-3, lora_ranks=(4, 16),
                                               max_lengths=(64,), batch_sizes=(8, 32)))


def test_samples_stay_inside_the_ranges():
    space = search_space(StudyConfig().replace(lr_min=1e-4, lr_max=1e-3))
    for _ in range(200):
        lr = space["lr"].sample()
        assert 1e-4 <= lr <= 1e-3
        assert space["lora_rank"].sample() in StudyConfig().dimension("lora_rank").choices


def test_only_searched_fields_get_a_domain():
    space = search_space(StudyConfig(searched=("lr", "batch_size")))
    assert set(space) == {"lr", "batch_size"}


def test_trial_config_takes_sampled_values_and_keeps_the_rest():
    import numpy as np

    base = TrialConfig(epochs=5, data=DEMO_DATA, seed=7)
    cfg = trial_config(base, {"lr": np.float64(3e-4), "lora_rank": np.int64(16),
                              "max_length": 64, "batch_size": 8})
    assert (cfg.lr, cfg.lora_rank, cfg.max_length, cfg.batch_size) == (3e-4, 16, 64, 8)
    assert type(cfg.lora_rank) is int and type(cfg.lr) is float
    assert (cfg.epochs, cfg.data, cfg.seed) == (5, DEMO_DATA, 7)


def test_cli_flags_map_to_study_and_trial_fields():
    study, base, resume = parse_args([
        "--num-trials", "12", "--max-concurrent", "3", "--lr-min", "1e-5", "--lr-max", "1e-3",
        "--lora-ranks", "8", "16", "--gpus-per-trial", "0.5", "--epochs", "4",
        "--data-dir", "/data", "--quantization", "8bit", "--search-seed", "3",
        "--storage-path", "s3://bucket/runs", "--address", "auto",
        "--mlflow-uri", "http://127.0.0.1:5000", "--experiment", "exp", "--name", "s1"])
    assert not resume
    lr = study.dimension("lr")
    assert (study.num_trials, study.max_concurrent, lr.low, lr.high) == (12, 3, 1e-5, 1e-3)
    assert study.dimension("lora_rank").choices == (8, 16)
    assert study.gpus_per_trial == 0.5 and study.search_seed == 3
    assert study.storage_path == "s3://bucket/runs" and study.is_remote_storage
    assert study.experiment_path == "s3://bucket/runs/s1"
    assert (base.epochs, base.data, base.quantization) == (4, "/data", "8bit")
    assert study.searched == SEARCHED


def test_a_searched_field_fixed_by_a_trial_flag_is_not_searched():
    study, base, _ = parse_args(["--max-length", "128", "--lr", "1e-3"])
    assert base.max_length == 128 and base.lr == 1e-3
    assert study.searched == ("lora_rank", "batch_size")
    assert set(search_space(study)) == {"lora_rank", "batch_size"}


def test_fixing_every_searched_field_is_an_error():
    with pytest.raises(UserError, match="nothing to tune"):
        parse_args(["--lr", "1e-3", "--lora-rank", "8", "--max-length", "64",
                    "--batch-size", "16"])


def test_a_cross_validated_study_is_a_trial_field_and_one_process_per_trial():
    study, base, _ = parse_args(["--cv-folds", "5"])
    assert base.cv_folds == 5 and study.workers_per_trial == 1
    with pytest.raises(UserError, match="cv_folds 5: .* one process .*workers_per_trial 2"):
        parse_args(["--cv-folds", "5", "--workers-per-trial", "2"])
    with pytest.raises(UserError, match="cv_folds must be an integer >= 2"):
        parse_args(["--cv-folds", "1"])


def test_smoke_is_tiny_and_uses_the_demo_data_unless_told_otherwise():
    study, base, _ = parse_args(["--smoke"])
    assert study.num_trials == SMOKE_STUDY["num_trials"] <= 3 and base.epochs <= 2
    assert base.data == DEMO_DATA
    study, base, _ = parse_args(["--smoke", "--data-dir", "/my/data", "--num-trials", "2"])
    assert base.data == "/my/data" and study.num_trials == 2


def test_config_file_sets_both_sections_and_flags_win(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("study:\n  num_trials: 20\n  lora_ranks: [8, 32]\n  lr_min: 1e-5\n"
                    "trial:\n  epochs: 6\n  class_weighting: none\n", encoding="utf-8")
    study, base, _ = parse_args(["--config", str(path), "--num-trials", "5"])
    assert study.num_trials == 5 and study.dimension("lora_rank").choices == (8, 32)
    assert study.dimension("lr").low == 1e-5
    assert base.epochs == 6 and base.class_weighting == "none"


@pytest.mark.parametrize("text, culprit", [
    ("study: [1, 2]\n", "mappings"),
    ("surprise: {}\n", "sections"),
    ("study:\n  num_trials: 0\n", "num_trials"),
    ("trial:\n  lr: -1\n", "lr"),
    ("study: {lr_min: 1e-3, lr_max: 1e-4}\n", "lr_min"),
    ("study: {lr_min: small}\n", "lr_min"),
    ("study: {a: [\n", "cannot read"),
])
def test_bad_config_files(tmp_path, text, culprit):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=culprit):
        parse_args(["--config", str(path)])


def test_missing_config_file():
    with pytest.raises(UserError, match="cannot read"):
        parse_args(["--config", "/no/such/file.yaml"])


def test_resume_refuses_flags_that_would_change_the_study(tmp_path):
    with pytest.raises(UserError, match="--lr-min"):
        parse_args(["--resume", "--lr-min", "1e-5"])
    with pytest.raises(UserError, match="no study"):
        parse_args(["--resume", "--name", "nothing", "--storage-path", str(tmp_path)])


@pytest.mark.parametrize("argv", [["--num-trials", "x"], ["--search", "grid"],
                                  ["--lora-ranks"], ["--gpus-per-trial", "half"]])
def test_bad_flags_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:")


def test_tracking_uri_defaults_to_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = StudyConfig().tracking_uri
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert StudyConfig(mlflow_uri="http://h:1").tracking_uri == "http://h:1"


def test_local_data_and_model_folders_become_absolute_for_trials(tmp_path, monkeypatch):
    from tune.driver import _absolute_paths

    (tmp_path / "data").mkdir()
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    base = _absolute_paths(TrialConfig(data="data", model="model"))
    assert base.data == str(tmp_path / "data") and base.model == str(tmp_path / "model")
    hub = _absolute_paths(TrialConfig(data="hub", model="roberta-base"))
    assert (hub.data, hub.model) == ("hub", "roberta-base")


def test_config_file_space_section_sets_ranges_and_what_is_searched(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("space:\n  lr: {low: 1e-4, high: 1e-3}\n  lora_rank: [8, 16]\n"
                    "  batch_size: {}\n", encoding="utf-8")
    study, _, _ = parse_args(["--config", str(path)])
    assert study.searched == ("lr", "lora_rank", "batch_size")
    assert (study.dimension("lr").low, study.dimension("lr").high) == (1e-4, 1e-3)
    assert study.dimension("lora_rank").choices == (8, 16)
    assert study.dimension("batch_size").choices == StudyConfig().dimension("batch_size").choices
    assert set(search_space(study)) == {"lr", "lora_rank", "batch_size"}


@pytest.mark.parametrize("section, culprit", [
    ({"dropout": [0.1]}, "unknown dimension 'dropout'"),
    ({"lr": {"low": 1e-4, "choices": [1e-3]}}, "lr \\(log_float\\) takes low and high, or choices"),
    ({"lora_dropout": {"choices": [0.1]}}, "lora_dropout \\(float\\) takes low and high$"),
    ({"lora_rank": {"low": 1, "high": 8}}, "lora_rank \\(choice\\) takes choices"),
    ([], "must map dimension names"),
])
def test_bad_space_sections_name_the_culprit(section, culprit):
    with pytest.raises(UserError, match=culprit):
        space_section(section, "config file x.yaml")


def test_the_space_round_trips_through_the_study_dict():
    study = StudyConfig().replace(lr_min=2e-4, lora_ranks=[4, 8], searched=["lr", "lora_rank"])
    assert StudyConfig.from_dict(study.to_dict()) == study
    assert study.to_dict()["lora_ranks"] == [4, 8] and study.to_dict()["lr_min"] == 2e-4


def test_lr_may_be_a_list_of_choices_from_a_flag_a_space_file_or_a_study_dict(tmp_path):
    """A grid of learning rates (`--lrs`, or a list under `lr:` in a space file) instead of
    the log-uniform range; it survives study.json and the MLflow params (the study dict)."""
    study, _, _ = parse_args(["--lrs", "1e-4", "3e-4", "1e-3"])
    lr = study.dimension("lr")
    assert lr.kind == "choice" and lr.choices == (1e-4, 3e-4, 1e-3)
    assert search_space(study)["lr"].categories == [1e-4, 3e-4, 1e-3]
    assert StudyConfig.from_dict(study.to_dict()) == study
    assert study.to_dict()["lrs"] == [1e-4, 3e-4, 1e-3] and "lr_min" not in study.to_dict()
    assert study.replace(num_trials=3).dimension("lr") == lr
    # A range given later replaces the choices, and the choices a range.
    assert study.replace(lr_min=2e-4).dimension("lr").low == 2e-4
    assert StudyConfig().replace(lrs=[1e-3]).dimension("lr").choices == (1e-3,)
    path = tmp_path / "grid.yaml"
    path.write_text("space:\n  lr: [1e-4, 1e-3]\n  lora_rank: [8]\n", encoding="utf-8")
    study, _, _ = parse_args(["--config", str(path)])
    assert study.dimension("lr").choices == (1e-4, 1e-3) and study.searched == ("lr", "lora_rank")


def test_the_shipped_space_file_is_the_default_space():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tune" / "spaces" / "default.yaml"
    study, base, _ = parse_args(["--config", str(path)])
    default = StudyConfig()
    assert study.searched == default.searched and study.space == default.space
    assert (study.num_trials, base.epochs) == (default.num_trials, 3)


def test_every_config_field_has_one_flag_with_its_docstring_as_help():
    import dataclasses

    from trainable.cli import field_docs
    from tune.run import build_parser

    text = " ".join(build_parser().format_help().split())
    for cls, skipped in ((StudyConfig, {"searched", "space"}),
                         (TrialConfig, {"output_dir", "eval_test", "data"})):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in skipped:
                continue
            flag = f"--{f.name.replace('_', '-')}"
            assert flag in text, f"no flag for {cls.__name__}.{f.name}"
            assert f.name in ("model", "target_modules") or docs[f.name][:40] in text, f.name
    assert "--quantization {4bit,8bit,none}" in text
    assert "--lora-ranks V [V ...]" in text


# --- the LoRA dimensions (tune/spaces/lora.yaml) ----------------------------------------------

LORA_SPACE = ("lora_alpha_ratio", "lora_targets", "lora_dropout", "class_weighting",
              "warmup_ratio", "weight_decay")


def test_the_lora_space_file_searches_every_dimension_and_keeps_the_default_four():
    from pathlib import Path

    from tune.space import DIMENSIONS

    path = Path(__file__).resolve().parents[2] / "tune" / "spaces" / "lora.yaml"
    study, base, _ = parse_args(["--config", str(path)])
    assert study.searched == (*SEARCHED, *LORA_SPACE)
    assert set(study.searched) == {d.name for d in DIMENSIONS}
    assert StudyConfig().searched == SEARCHED  # the default search is still the four
    assert base == TrialConfig()  # a space file changes what is searched, not the trial
    assert study.dimension("lora_targets").choices == ("attention", "attention+head",
                                                       "all-linear")
    # --smoke keeps its budget and narrows the four; the LoRA ranges are the file's.
    smoke, base, _ = parse_args(["--smoke", "--config", str(path)])
    assert smoke.num_trials == SMOKE_STUDY["num_trials"] and base.data == DEMO_DATA
    assert smoke.dimension("lora_rank").choices == SMOKE_STUDY["lora_ranks"]
    assert smoke.searched == study.searched


def test_lora_dimensions_have_flags_and_sample_valid_trial_configs():
    import numpy as np

    study, _, _ = parse_args(["--lora-target-presets", "attention", "all-linear",
                              "--class-weightings", "sqrt", "none", "--lora-dropout-min", "0.05",
                              "--lora-dropout-max", "0.2", "--weight-decay-max", "1e-2",
                              "--lora-alpha-ratio-min", "1", "--warmup-ratio-max", "0.1"])
    assert study.searched == SEARCHED  # setting a range does not search it
    assert study.dimension("lora_targets").choices == ("attention", "all-linear")
    assert study.dimension("class_weighting").choices == ("sqrt", "none")
    assert (study.dimension("lora_dropout").low, study.dimension("lora_dropout").high) == (
        0.05, 0.2)
    assert study.dimension("weight_decay").high == 1e-2
    assert study.dimension("lora_alpha_ratio").low == 1.0
    study = study.replace(searched=list(LORA_SPACE))
    space = search_space(study)
    assert set(space) == set(LORA_SPACE)
    assert "LogUniform" in type(space["weight_decay"].get_sampler()).__name__
    assert "LogUniform" not in type(space["lora_dropout"].get_sampler()).__name__
    for _ in range(50):
        sampled = {name: domain.sample() for name, domain in space.items()}
        cfg = trial_config(TrialConfig(), {k: np.asarray(v)[()] for k, v in sampled.items()})
        assert type(cfg.lora_targets) is str and cfg.lora_targets in ("attention", "all-linear")
        assert type(cfg.class_weighting) is str and 0.05 <= cfg.lora_dropout <= 0.2
        assert 1e-4 <= cfg.weight_decay <= 1e-2 and 0 <= cfg.warmup_ratio <= 0.1
        assert cfg.alpha == cfg.lora_alpha_ratio * cfg.lora_rank
    assert StudyConfig.from_dict(study.to_dict()) == study


def test_an_explicit_list_or_alpha_takes_its_preset_or_ratio_out_of_the_search(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("space:\n  lr: {}\n  lora_targets: [attention, all-linear]\n"
                    "  lora_alpha_ratio: {}\n", encoding="utf-8")
    study, base, _ = parse_args(["--config", str(path), "--target-modules", "query", "value"])
    assert base.target_modules == ("query", "value")
    assert study.searched == ("lr", "lora_alpha_ratio")
    study, base, _ = parse_args(["--config", str(path), "--lora-alpha", "16"])
    assert base.lora_alpha == 16 and study.searched == ("lr", "lora_targets")
