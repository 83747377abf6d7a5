"""Shared fixtures and helpers: a tiny real BERT classifier, the shipped data, CLI runners,
an MLflow server, a study driver in the background, and look-ups of a study's MLflow runs.

The tiny model is a real (randomly initialised) BERT built from a `BertConfig`, saved the
way a hub model is, so tests exercise the real loading, quantization and LoRA paths in
seconds instead of fine-tuning MiniLM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """No network here: hub look-ups fail at once instead of retrying (set before HF imports)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests on machines without CUDA."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)


def tiny_bert_config(tokenizer: Any | None = None) -> Any:
    """The tiny BERT of every test: 2 layers, 2 heads, hidden 64, 128 positions, 2 labels.

    Hidden size 64: bitsandbytes quantizes in blocks of 64 values. With `tokenizer`, its
    vocabulary and padding id; without, BERT's defaults (tests that need no tokenizer).
    """
    from transformers import BertConfig

    vocab = {} if tokenizer is None else {"vocab_size": tokenizer.vocab_size,
                                          "pad_token_id": tokenizer.pad_token_id}
    return BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=128, max_position_embeddings=128, num_labels=2, **vocab)


# Tiny encoders of other architecture families (trainable.model.LORA_LAYERS): the same size
# as the tiny BERT, each from its own config class. Keys are `config.model_type`.
TINY_ENCODERS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert": ("BertConfig", {}),
    # RoBERTa's positions start after the padding id: two more than the tokens it holds.
    "roberta": ("RobertaConfig", {"max_position_embeddings": 130, "type_vocab_size": 1}),
    "distilbert": ("DistilBertConfig", {"dim": 64, "n_layers": 2, "n_heads": 2,
                                        "hidden_dim": 128}),
    # DeBERTa-v3's relative attention, with unshared position projections (more layers to adapt).
    "deberta-v2": ("DebertaV2Config", {"type_vocab_size": 0, "relative_attention": True,
                                       "position_biased_input": False, "share_att_key": False,
                                       "pos_att_type": ["p2c", "c2p"], "position_buckets": 32}),
    "modernbert": ("ModernBertConfig", {"reference_compile": False}),
    "xlm-roberta": ("XLMRobertaConfig", {"max_position_embeddings": 130}),
    "camembert": ("CamembertConfig", {"max_position_embeddings": 130}),
    "electra": ("ElectraConfig", {"embedding_size": 32}),
    "deberta": ("DebertaConfig", {"type_vocab_size": 0}),  # peft knows it; LORA_LAYERS does not
}


def tiny_encoder_config(model_type: str, tokenizer: Any | None = None) -> Any:
    """A tiny config of `model_type` (2 layers, 2 heads, hidden 64, 2 labels); with
    `tokenizer`, its vocabulary and special-token ids (ModernBERT's defaults would not fit)."""
    import transformers

    if model_type == "bert":
        return tiny_bert_config(tokenizer)
    name, extra = TINY_ENCODERS[model_type]
    ids = {} if tokenizer is None else {
        "vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id,
        "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id}
    size = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 128, "max_position_embeddings": 128}
    return getattr(transformers, name)(**size | ids | extra, num_labels=2)


def save_tiny_encoder(folder: Path, model_type: str) -> Path:
    """Save a tiny random `model_type` classifier and the packaged MiniLM tokenizer in
    `folder`, as a hub model folder of that architecture would hold them."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainable.config import PACKAGED_MODEL
    from trainable.model import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(PACKAGED_MODEL))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        tiny_encoder_config(model_type, tokenizer))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_model(folder: Path, warm: bool = False) -> Path:
    """Save the tiny random BERT classifier and the packaged MiniLM tokenizer in `folder`.

    warm: the encoder briefly trained on the demo set, under a fresh head. A random encoder
    gives every trial the same (zero) F1, so ASHA and the best-trial logic would only ever
    see ties; these features make the learning rate matter within seconds.
    """
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from trainable.config import PACKAGED_MODEL
    from trainable.model import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(PACKAGED_MODEL))
    config = tiny_bert_config(tokenizer)
    torch.manual_seed(0)  # the same tiny model in every session
    model = BertForSequenceClassification(config)
    if warm:
        _train_briefly(model, tokenizer)
        fresh = BertForSequenceClassification(config)  # new random head, trained encoder
        fresh.bert.load_state_dict(model.bert.state_dict())
        model = fresh
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _train_briefly(model: Any, tokenizer: Any) -> None:
    """Four epochs of the demo train split, batches of 16, AdamW at 3e-3."""
    import torch

    from trainable.data import demo_dir, read_split_file

    train = read_split_file(demo_dir() / "train.tsv")
    enc = tokenizer(train["text"].tolist(), truncation=True, max_length=64, padding=True,
                    return_tensors="pt")
    labels = torch.tensor(train["label"].tolist())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(4):
        order = torch.randperm(len(labels))
        for i in range(0, len(labels), 16):
            idx = order[i:i + 16]
            loss = model(input_ids=enc["input_ids"][idx],
                         attention_mask=enc["attention_mask"][idx], labels=labels[idx]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT sequence classifier plus the packaged MiniLM tokenizer, on disk."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def warm_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with its encoder briefly trained on the demo set and a fresh head."""
    return save_tiny_model(tmp_path_factory.mktemp("warm-tiny-bert"), warm=True)


@pytest.fixture(scope="session")
def tiny_recording(warm_tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `bench.curves` recording of the tiny BERT on the demo set: 4 configurations
    (lr 1e-3 and 3e-3 x rank 4 and 8, max_length 64, batch 8), 3 epochs, seed 42, two runs
    at once."""
    curves = tmp_path_factory.mktemp("tiny-recording") / "curves"
    record = subprocess.run(
        [sys.executable, "-m", "bench.curves", "--model", str(warm_tiny_model_dir), "--data-dir",
         str(REPO_ROOT / "trainable" / "demo"), "--train-samples", "48", "--lrs", "1e-3", "3e-3",
         "--lora-ranks", "4", "8", "--max-lengths", "64", "--batch-sizes", "8", "--epochs", "3",
         "--seeds", "42", "--parallel", "2", "--out", str(curves)],
        cwd=curves.parent, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True,
        text=True, timeout=600)
    assert record.returncode == 0, record.stderr[-3000:]
    return curves


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real UNFAIR-ToS files: $UNFAIR_TOS_DIR or ../shared/data/unfair_tos."""
    folder = Path(os.environ.get("UNFAIR_TOS_DIR") or REPO_ROOT.parent / "shared" / "data"
                  / "unfair_tos")
    if not all((folder / f"{s}.tsv").is_file() for s in ("train", "validation", "test")):
        pytest.skip(f"real UNFAIR-ToS data not found in {folder} (set UNFAIR_TOS_DIR)")
    return folder


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: offline, quiet tokenizers, plus `env`.

    Without the MLflow URIs of this test process: `mlflow.set_tracking_uri`, which commands
    run in-process by earlier tests call, exports them, and a subprocess would follow them to
    an earlier test's server."""
    merged = {k: v for k, v in os.environ.items()
              if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    merged.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    merged.update(env or {})
    return merged


def run_cli(*args: str, module: str = "trainable.train", env: dict[str, str] | None = None,
            timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <module> *args` in a fresh process and capture its output."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=cli_env(env),
                          cwd=cwd or REPO_ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cli():
    """`run_cli(*args, env=None, timeout=...)` -> CompletedProcess of `python -m trainable.train`."""
    return run_cli


def error_lines(stderr: str) -> list[str]:
    """The lines of `stderr` our CLIs print for a user error (libraries may add warnings)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200 (MLflow's /health), or fail the test."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before {url} was healthy")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} not healthy after {timeout:.0f} s")


class MlflowServer:
    """A real `mlflow server` (sqlite backend, local artifacts) on 127.0.0.1."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_healthy(f"{self.uri}/health", proc=self.proc)
        return self

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """One MLflow tracking server for the session (studies use their own experiments)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


def run_study_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
                  timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `python tune/run.py *args` (the real driver script) in `cwd`."""
    merged = cli_env({"RAY_DEDUP_LOGS": "0", **(env or {})})
    return subprocess.run([sys.executable, str(REPO_ROOT / "tune" / "run.py"), *map(str, args)],
                          env=merged, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def tiny_study_args(model_dir: Path, storage: Path, mlflow_uri: str, name: str,
                    experiment: str, **overrides: object) -> list[str]:
    """Flags of a small real study with the tiny model on the demo data (about a minute)."""
    flags: dict[str, object] = {
        "--name": name, "--experiment": experiment, "--mlflow-uri": mlflow_uri,
        "--storage-path": storage, "--model": model_dir, "--data": "demo",
        "--num-trials": 6, "--max-concurrent": 2, "--epochs": 3, "--reduction-factor": 2,
        "--grace-period": 1, "--lr-min": 1e-3, "--lr-max": 3e-2, "--lora-ranks": "4 8",
        "--max-lengths": "32 64", "--batch-sizes": "16 32", "--max-train-samples": 160,
        "--max-eval-samples": 60, "--cpus-per-trial": 1, "--search-seed": 0,
    }
    flags.update({f"--{k.replace('_', '-')}": v for k, v in overrides.items()})
    out: list[str] = []
    for flag, value in flags.items():
        if value is None:
            continue
        if value is True:
            out.append(flag)
        else:
            out += [flag, *str(value).split(" ")]
    return out


class Study:
    """A study driver running in the background, its stdout read line by line."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "tune" / "run.py"), *map(str, args)], cwd=cwd,
            env=cli_env({"RAY_DEDUP_LOGS": "0", **(env or {})}), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 600) -> re.Match:
        """Read output until a line matches `pattern`."""
        deadline = time.time() + timeout
        assert self.proc.stdout is not None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    pytest.fail(f"study exited ({self.proc.returncode}) before {pattern!r}:\n"
                                + "".join(self.lines[-60:]))
                continue
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        pytest.fail(f"{pattern!r} not seen in {timeout} s:\n" + "".join(self.lines[-60:]))

    def finish(self, timeout: float = 900) -> str:
        """Wait for the driver to exit; return all its output."""
        rest, _ = self.proc.communicate(timeout=timeout)
        self.lines.append(rest)
        return "".join(self.lines)

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        """Never leave a driver running: a failed test ends its whole session."""
        if self.proc.poll() is None:
            self.kill_everything()

    def kill_everything(self) -> None:
        """End the driver's whole session (its in-process Ray included)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def study_runs(uri: str, experiment: str, study: str,
               one_parent: bool = True) -> tuple[Any, list, list]:
    """(client, parent runs, trial runs) of `study` in MLflow; a study has one parent run
    (checked unless `one_parent` is False)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.study = '{study}'",
                              max_results=1000)
    parents = [r for r in runs if r.data.tags.get("run_type") == "study"]
    assert len(parents) == 1 or not one_parent, f"{len(parents)} parent runs"
    return client, parents, [r for r in runs if r.data.tags.get("run_type") == "trial"]


def trial_dirs(storage: Path, name: str) -> dict[str, Path]:
    """Trial id -> trial folder of study `name`, for trials that reported a result."""
    found = {}
    for folder in (storage / name).iterdir():
        result = folder / "result.json"
        if folder.is_dir() and result.is_file():
            lines = result.read_text().splitlines()
            if lines and lines[0].strip():
                found[json.loads(lines[0])["trial_id"]] = folder
    return found


FAKE_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEY000TESTING",
    "AWS_SECRET_ACCESS_KEY": "fake/secret+Key0000000000000000000TESTING",
    "HF_TOKEN": "hf_fakeTokenForTestsOnly0000000000",
    "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-password-for-tests",
}


@pytest.fixture(scope="session")
def tiny_study(warm_tiny_model_dir: Path, mlflow_server: MlflowServer,
               tmp_path_factory: pytest.TempPathFactory):
    """A finished real study (tiny model, demo data) mirrored into the MLflow server.

    Returns a dict: name, experiment, storage (Path), tracking_uri, proc (CompletedProcess).
    """
    work = tmp_path_factory.mktemp("tiny-study")
    name, experiment = "tiny", "tests-tiny"
    # Credentials in the environment (as on a cloud node) must never reach params, tags or logs.
    proc = run_study_cli(*tiny_study_args(warm_tiny_model_dir, work / "runs", mlflow_server.uri,
                                          name, experiment), cwd=work, env=FAKE_SECRETS)
    if proc.returncode != 0:
        pytest.fail(f"tiny study failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-5000:]}")
    return {"name": name, "experiment": experiment, "storage": work / "runs", "cwd": work,
            "tracking_uri": mlflow_server.uri, "proc": proc, "model_dir": warm_tiny_model_dir}


def run_in_terminal(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
                    timeout: float = 300) -> tuple[int, str]:
    """Run `argv` with stdin, stdout and stderr on a pseudo-terminal, as a person at a terminal
    would; return (exit code, everything it wrote)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 x 0; tqdm would fit its bar into zero columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower,
                            cwd=cwd or REPO_ROOT, env=cli_env(env), close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's last writer is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail(f"{argv} still running after {timeout:.0f} s")
        code = proc.wait(timeout=30)
    finally:
        os.close(leader)
    return code, b"".join(chunks).decode("utf-8", "replace")
