"""The console scripts in pyproject.toml point at each command's `main`."""

from __future__ import annotations

import tomllib
from importlib import import_module
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
COMMANDS = {"tune/run.py": "tune.run", "python -m tune.sync": "tune.sync",
            "python -m analysis.compare": "analysis.compare",
            "python -m analysis.best": "analysis.best",
            "python -m analysis.predict": "analysis.predict",
            "python -m trainable.train": "trainable.train"}


def test_every_command_has_a_console_script_calling_its_main():
    scripts = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["scripts"]
    targets = {}
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(import_module(module), attr)), name
        targets[module] = attr
    assert targets == {module: "main" for module in COMMANDS.values()}
