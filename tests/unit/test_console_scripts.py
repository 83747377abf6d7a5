"""The console scripts in pyproject.toml point at each command's `main`."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import distribution

import pytest

pytestmark = pytest.mark.unit

COMMANDS = {"tune/run.py": "tune.run", "python -m tune.sync": "tune.sync",
            "python -m analysis.compare": "analysis.compare",
            "python -m analysis.best": "analysis.best",
            "python -m analysis.predict": "analysis.predict",
            "python -m trainable.train": "trainable.train"}


def test_every_command_has_a_console_script_calling_its_main():
    scripts = [ep for ep in distribution("qlora-tune").entry_points
               if ep.group == "console_scripts"]
    targets = {}
    for script in scripts:
        name, (module, _, attr) = script.name, script.value.partition(":")
        assert callable(getattr(import_module(module), attr)), name
        targets[module] = attr
    assert targets == {module: "main" for module in COMMANDS.values()}
