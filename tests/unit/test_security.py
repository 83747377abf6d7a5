"""Security habits that hold across the code base: no remote code, no pickles, no open binds."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import REPO_ROOT
from trainable.config import TrialConfig
from trainable.errors import UserError

pytestmark = pytest.mark.unit

SOURCES = [p for folder in ("trainable", "tune", "analysis", "bench", "cluster")
           for p in (REPO_ROOT / folder).rglob("*.py")]


def test_trust_remote_code_is_off_unless_asked(tmp_path):
    from trainable.model import load_model_config

    assert TrialConfig().trust_remote_code is False
    marker = tmp_path / "code-ran"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "remote-code-test", "auto_map": {"AutoConfig": "custom.CustomConfig"}}))
    (folder / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'remote-code-test'\n")
    with pytest.raises(UserError, match="cannot load its config"):
        load_model_config(TrialConfig(model=str(folder)))
    assert not marker.exists(), "model code ran without trust_remote_code"


def test_torch_load_is_always_weights_only():
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_no_pickle_loading_in_the_code_base():
    pattern = re.compile(r"\b(pickle|cloudpickle|dill|joblib)\.loads?\(")
    for path in SOURCES:
        assert not pattern.search(path.read_text(encoding="utf-8")), path


def test_mlflow_servers_in_scripts_and_docs_bind_to_localhost():
    docs = [*SOURCES, *REPO_ROOT.glob("*.md"), *(REPO_ROOT / "cluster").rglob("*"),
            *(REPO_ROOT / "docs").rglob("*")]
    found = 0
    for path in docs:
        if not path.is_file() or path.suffix not in (".py", ".md", ".yaml", ".yml", ".sh", ""):
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if re.search(r"mlflow (server|ui)\b", line) and "--host" in line:
                found += 1
                assert "--host 127.0.0.1" in line, f"{path}: {line.strip()}"
            if re.search(r"--(dashboard-)?host[ =]", line):
                assert "0.0.0.0" not in line, f"{path}: {line.strip()}"
    assert found, "no mlflow server/ui command found to check"
