"""Every command in README.md and BENCHMARKS.md runs as written from a fresh checkout.

Commands are read from the two files (fenced blocks and inline code), not copied here:
- every `python` command's entry point starts (`--help`) and knows each flag the command
  passes; the study and trial commands' values also pass the configs' own validation;
- the README's "A real study" chain and the BENCHMARKS quality chains run end to end in a
  scratch checkout (the repository's folders linked into a new folder, `../shared` beside
  it): each study command as written plus flags that shrink it to a tiny model and one
  epoch (later flags win), every analysis command exactly as written;
- commands with placeholders (NAME) give their one-line error on a fresh checkout.
Left out by design: environment set-up (`python3 -m venv`, `pip install`), `make test` and
`python -m pytest` (this very run), `make study` (the set-up, then `python tune/run.py
--smoke`, which runs here), `ray up` (needs cloud credentials; its YAML is checked by
tests/unit/test_cluster_config.py), `bash bench/gpu_check.sh` (needs a GPU machine; checked
here for syntax only).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, cli_env, error_lines

pytestmark = pytest.mark.integration

DOCS = ("README.md", "BENCHMARKS.md")
SETUP = ("python3 -m venv", ". .venv/bin/activate", "pip install")
# What the tests run instead of the studies' hours: a tiny model, 2 trials of 1 epoch.
SHRINK = ["--num-trials", "2", "--max-concurrent", "2", "--epochs", "1", "--max-lengths", "64",
          "--max-train-samples", "64", "--max-eval-samples", "40"]


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every shell command the two documents show."""
    found = []
    for doc in DOCS:
        text = (REPO_ROOT / doc).read_text(encoding="utf-8")
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                found += [(doc, part.strip()) for part in line.split("&&") if part.strip()]
        for span in re.findall(r"`((?:python|mlflow|ray|bash) [^`]+)`", text):
            found.append((doc, span.strip()))
    return list(dict.fromkeys(found))


def python_commands() -> list[tuple[str, str]]:
    return [(doc, cmd) for doc, cmd in documented_commands()
            if re.sub(r"^/usr/bin/time -v ", "", cmd).startswith("python ")
            and not cmd.startswith(SETUP) and not cmd.startswith("python -m pytest")]


def entry_and_args(cmd: str) -> tuple[list[str], list[str]]:
    """(how to start the entry point, its arguments) of a documented python command."""
    words = shlex.split(re.sub(r"^/usr/bin/time -v ", "", cmd))
    assert words[0] == "python", cmd
    if words[1] == "-m":
        return ["-m", words[2]], words[3:]
    return [words[1]], words[2:]


@cache
def help_text(entry: tuple[str, ...]) -> str:
    proc = subprocess.run([sys.executable, *entry, "--help"], cwd=REPO_ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(entry)} --help: {proc.stderr[-2000:]}"
    return proc.stdout


def test_the_documents_show_the_commands_this_test_knows():
    commands = [cmd for _, cmd in documented_commands()]
    assert any(c.startswith("python tune/run.py --smoke") for c in commands)
    assert any("analysis.predict" in c for c in commands)
    assert any("runs/quality/mlflow.db" in c for c in commands)
    others = [c for c in commands if not c.startswith(("python", "/usr/bin/time", *SETUP))]
    assert sorted(others) == ["bash bench/gpu_check.sh", "make study", "make test",
                              "ray up cluster/cluster.yaml"], others


@pytest.mark.parametrize(("doc", "cmd"), python_commands(),
                         ids=[f"{d}: {c[:70]}" for d, c in python_commands()])
def test_each_documented_command_starts_and_knows_its_flags(doc, cmd):
    entry, args = entry_and_args(cmd)
    if entry[0].endswith(".py"):
        assert (REPO_ROOT / entry[0]).is_file(), f"{doc}: no {entry[0]}"
    passed_on: list[str] = []
    if "--extra" in args:  # bench/search_efficiency.py hands what follows to tune/run.py
        args, passed_on = args[:args.index("--extra") + 1], args[args.index("--extra") + 1:]
    for flags, where in ((args, entry), (passed_on, ["tune/run.py"])):
        shown = help_text(tuple(where))
        for flag in (a for a in flags if a.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", shown), f"{doc}: {cmd}: {flag}?"
    values = [a.replace("$PWD", "/tmp") for a in args if a != "..."]
    if entry == ["tune/run.py"] and "--resume" not in args:
        from tune.run import parse_args

        parse_args(values)  # study and trial configs validate (UserError otherwise)
    elif entry == ["-m", "trainable.train"]:
        from trainable.train import parse_args

        parse_args([v.replace("DIR", "../shared/data/unfair_tos") for v in values])


def test_the_other_documented_commands(tmp_path):
    assert (REPO_ROOT / "cluster" / "cluster.yaml").is_file()
    proc = subprocess.run(["bash", "-n", str(REPO_ROOT / "bench" / "gpu_check.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mlflow", "ui", "--help"], env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--backend-store-uri" in proc.stdout


# -- run as written, from a fresh checkout ------------------------------------------------------

@pytest.fixture
def checkout(tmp_path, shared_data_dir):
    """A fresh checkout's layout: the repository's folders in a new folder, ../shared beside."""
    root = tmp_path / "qlora-tune"
    root.mkdir()
    for name in ("tune", "trainable", "analysis", "bench", "cluster", "docs", "pyproject.toml"):
        (root / name).symlink_to(REPO_ROOT / name)
    (tmp_path / "shared").symlink_to(shared_data_dir.parents[1])
    assert (root / "../shared/data/unfair_tos").resolve() == shared_data_dir.resolve()
    return root


def run_as_written(cmd: str, cwd: Path, extra: list[str] = (), timeout: float = 900
                   ) -> subprocess.CompletedProcess:
    words = shlex.split(cmd.replace("$PWD", str(cwd)))
    assert words[0] == "python", cmd
    proc = subprocess.run([sys.executable, *words[1:], *extra], cwd=cwd,
                          env=cli_env({"RAY_DEDUP_LOGS": "0"}), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _block(doc: str, first: str) -> list[str]:
    """The commands of the fenced block in `doc` whose first command starts with `first`."""
    commands = [cmd for d, cmd in documented_commands() if d == doc]
    start = next(i for i, cmd in enumerate(commands) if cmd.startswith(first))
    block = []
    for cmd in commands[start:]:
        if block and cmd.startswith("python tune/run.py"):
            break
        block.append(cmd)
    return block


def test_the_readme_real_study_chain_runs_as_written(checkout, tiny_model_dir):
    study, compare, best, predict = _block(
        "README.md", "python tune/run.py --data-dir ../shared/data/unfair_tos")[:4]
    assert "analysis.compare" in compare and "analysis.best" in best and "predict" in predict
    run_as_written(study, checkout, ["--model", str(tiny_model_dir), *SHRINK])
    assert (checkout / "mlflow.db").is_file()
    out = run_as_written(compare, checkout).stdout
    assert "2 trials" in out and "trials:" in out
    out = run_as_written(best, checkout).stdout
    assert "registered unfair-tos-classifier" in out and (checkout / "champion").is_dir()
    out = run_as_written(predict, checkout).stdout
    assert re.search(r"brightnote-terms\.txt: \d+ of \d+ clauses potentially unfair", out), out


@pytest.mark.parametrize(("first", "store"), [
    ("python tune/run.py --data-dir ../shared/data/unfair_tos --name quality", "quality"),
    ("python tune/run.py --config tune/spaces/cpu-quality.yaml", "cpu-quality")])
def test_the_benchmarks_quality_chains_run_as_written_on_a_fresh_checkout(first, store, checkout,
                                                                          tiny_model_dir):
    """Their sqlite stores live in runs/<study>/, which a fresh checkout does not have."""
    study, best = _block("BENCHMARKS.md", first)[:2]
    assert f"runs/{store}/mlflow.db" in study and "analysis.best" in best
    assert not (checkout / "runs").exists()
    run_as_written(study, checkout, ["--model", str(tiny_model_dir), *SHRINK])
    assert (checkout / "runs" / store / "mlflow.db").is_file()
    out = run_as_written(best, checkout).stdout
    assert "test split" in out and (checkout / "runs" / store / "champion").is_dir()


@pytest.mark.parametrize("cmd", ["python -m tune.sync --name NAME",
                                 "python tune/run.py --resume --name NAME"])
def test_placeholder_commands_give_their_one_line_error_on_a_fresh_checkout(cmd, checkout):
    assert cmd in [c for _, c in documented_commands()]
    words = shlex.split(cmd)
    proc = subprocess.run([sys.executable, *words[1:]], cwd=checkout, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "no study at" in lines[0] and "/runs/NAME" in lines[0], lines
    assert "Traceback" not in proc.stderr
