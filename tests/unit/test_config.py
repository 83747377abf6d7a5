"""TrialConfig: validation with one-line errors, round trips, and the objective."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from trainable.config import OBJECTIVE, Objective, TrialConfig
from trainable.errors import UserError

pytestmark = pytest.mark.unit

NAN = float("nan")

# (field, bad value): each must be rejected with a one-line message naming the field.
BAD_VALUES = [
    ("lr", 0),
    ("lr", -1e-4),
    ("lr", NAN),
    ("lr", float("inf")),
    ("lr", "1e-4"),
    ("lora_rank", 0),
    ("lora_rank", 2.5),
    ("lora_alpha", 0),
    ("lora_alpha", NAN),
    ("lora_alpha_ratio", 0),
    ("lora_alpha_ratio", -2.0),
    ("lora_alpha_ratio", float("inf")),
    ("lora_alpha_ratio", None),
    ("lora_targets", "all"),
    ("lora_targets", None),
    ("lora_dropout", -0.1),
    ("lora_dropout", 1.0),
    ("lora_dropout", NAN),
    ("batch_size", 0),
    ("batch_size", -16),
    ("max_length", 7),
    ("max_length", 0),
    ("epochs", 0),
    ("seed", -1),
    ("weight_decay", -0.01),
    ("warmup_ratio", 1.0),
    ("max_train_samples", 1),
    ("max_eval_samples", 0),
    ("threads", 0),
    ("cv_folds", 1),
    ("cv_folds", True),
    ("quantization", "2bit"),
    ("quantization", None),
    ("precision", "bf16"),
    ("class_weighting", "inverse"),
    ("accelerator", "tpu"),
    ("target_modules", ()),
    ("target_modules", []),
    ("target_modules", ("query", "")),
    ("target_modules", "query"),  # a string would otherwise be split into characters
    ("model", ""),
    ("data", " "),
    ("output_dir", ""),
    # bools where numbers belong, and numbers or strings where bools belong
    ("lora_rank", True),
    ("batch_size", True),
    ("epochs", False),
    ("max_length", True),
    ("lr", True),
    ("lora_dropout", False),
    ("max_train_samples", True),
    ("eval_test", 1),
    ("group_by_length", "false"),
    ("pad_to_max_length", 0),
    ("trust_remote_code", "no"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES,
                         ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_bad_value_is_a_one_line_error_naming_the_field(field, value):
    with pytest.raises(UserError) as err:
        TrialConfig(**{field: value})
    message = str(err.value)
    assert field in message
    assert "\n" not in message and message.strip() == message and message


def test_defaults_are_valid_and_alpha_is_twice_the_rank():
    cfg = TrialConfig()
    assert cfg.alpha == 2.0 * cfg.lora_rank
    assert TrialConfig(lora_rank=4).alpha == 8.0
    assert TrialConfig(lora_rank=4, lora_alpha=3).alpha == 3.0
    # Searching the rank keeps alpha tied to it unless alpha is set.
    assert cfg.replace(lora_rank=32).alpha == 64.0


def test_alpha_follows_the_ratio_unless_alpha_is_given():
    assert TrialConfig(lora_rank=8, lora_alpha_ratio=0.5).alpha == 4.0
    assert TrialConfig(lora_rank=16, lora_alpha_ratio=1).alpha == 16.0
    # An explicit alpha wins over the ratio (a searched ratio then changes nothing).
    assert TrialConfig(lora_rank=8, lora_alpha=3, lora_alpha_ratio=4.0).alpha == 3.0


def test_a_config_saved_before_the_lora_presets_reads_as_it_trained():
    """trial_config.json files written before lora_targets and lora_alpha_ratio existed load
    with the defaults that reproduce what they trained: alpha 2 x rank, attention + head."""
    old = TrialConfig(lora_rank=4).to_dict()
    del old["lora_targets"], old["lora_alpha_ratio"]
    cfg = TrialConfig.from_dict(old)
    assert (cfg.alpha, cfg.lora_targets) == (8.0, "attention+head")


def test_good_edge_values_are_accepted():
    cfg = TrialConfig(lr=1, lora_rank=1, batch_size=1, max_length=8, epochs=1, seed=0,
                      lora_dropout=0.0, warmup_ratio=0.0, max_train_samples=2,
                      max_eval_samples=2, threads=1, target_modules=["query"])
    assert cfg.target_modules == ("query",)


def _full_config() -> TrialConfig:
    return TrialConfig(model="some/model", quantization="none", lora_rank=4, lora_alpha=12.0,
                       lora_dropout=0.0, target_modules=("query", "key", "value"), lr=3e-4,
                       batch_size=8, max_length=64, epochs=2, seed=7, precision="32-true",
                       class_weighting="balanced", data="/data/unfair_tos",
                       max_train_samples=100, max_eval_samples=50, group_by_length=False,
                       pad_to_max_length=True, eval_test=True, output_dir="/tmp/x",
                       accelerator="cpu", threads=2)


def test_dict_and_json_round_trips_are_equal(tmp_path):
    cfg = _full_config()
    d = cfg.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(TrialConfig)}
    assert d["target_modules"] == ["query", "key", "value"]
    assert TrialConfig.from_dict(d) == cfg
    # Through real JSON (lists, not tuples) and through a file.
    assert TrialConfig.from_dict(json.loads(cfg.to_json())) == cfg
    path = tmp_path / "trial_config.json"
    path.write_text(cfg.to_json(), encoding="utf-8")
    assert TrialConfig.from_json_file(path) == cfg
    assert TrialConfig.from_json_file(path).to_json() == cfg.to_json()
    assert TrialConfig.from_dict(TrialConfig().to_dict()) == TrialConfig()


def test_from_dict_rejects_unknown_fields():
    d = TrialConfig().to_dict() | {"learning_rate": 1e-3}
    with pytest.raises(UserError, match="learning_rate"):
        TrialConfig.from_dict(d)


def test_from_dict_validates_values():
    with pytest.raises(UserError, match="lr"):
        TrialConfig.from_dict(TrialConfig().to_dict() | {"lr": -1})


def test_from_json_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(UserError, match="missing.json"):
        TrialConfig.from_json_file(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="broken.json"):
        TrialConfig.from_json_file(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(UserError, match="list.json"):
        TrialConfig.from_json_file(listed)


def test_replace_validates_and_rejects_unknown_fields():
    cfg = TrialConfig()
    new_lr = cfg.lr * 3
    assert cfg.replace(lr=new_lr).lr == new_lr
    assert cfg.lr != new_lr  # frozen: the original is unchanged
    with pytest.raises(UserError, match="lr"):
        cfg.replace(lr=0)
    with pytest.raises(UserError, match="batch_size"):
        cfg.replace(batch_size=0)
    with pytest.raises(UserError, match="nosuchfield"):
        cfg.replace(nosuchfield=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_config_is_hashable():
    assert hash(_full_config()) == hash(TrialConfig.from_dict(_full_config().to_dict()))


def test_is_local_data():
    assert not TrialConfig(data="hub").is_local_data
    assert not TrialConfig(data="demo").is_local_data
    assert TrialConfig(data="/some/dir").is_local_data


@pytest.mark.parametrize(("mode", "new", "old", "better"), [
    ("max", 0.5, None, True),
    ("max", NAN, None, False),
    ("max", 0.5, NAN, True),
    ("max", NAN, NAN, False),
    ("max", NAN, 0.5, False),
    ("max", 0.6, 0.5, True),
    ("max", 0.5, 0.5, False),  # ties keep the earlier epoch
    ("max", 0.4, 0.5, False),
    ("max", 0.0, None, True),
    ("min", 0.4, 0.5, True),
    ("min", 0.6, 0.5, False),
    ("min", 0.5, 0.5, False),
    ("min", NAN, 0.5, False),
    ("min", 0.5, NAN, True),
])
def test_objective_better(mode, new, old, better):
    assert Objective("val/loss" if mode == "min" else "val/f1", mode).better(new, old) is better


def test_objective_picks_the_best_of_a_sequence_with_nans():
    scores = [NAN, 0.2, NAN, 0.7, 0.7, 0.1]
    best = None
    for s in scores:
        if OBJECTIVE.better(s, best):
            best = s
    assert best == 0.7 and not math.isnan(best)


def test_memory_limit_caps_what_the_block_allocates_and_is_lifted_after():
    import resource

    import torch

    from trainable.train import memory_limit

    before = resource.getrlimit(resource.RLIMIT_DATA)
    with memory_limit(0.25):
        small = torch.ones(16 * 1024**2 // 4)  # 16 MB: within the budget
        with pytest.raises(RuntimeError, match="allocate memory"):
            torch.ones(1024**3 // 4)  # 1 GB: over it
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    big = torch.ones(1024**3 // 4)  # allowed again
    assert big.numel() > small.numel()
