"""Command-line plumbing shared by every entry point of the project."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit 2, without the usage dump."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def configure_logging(verbose: bool = True) -> None:
    """Our INFO lines on stderr; the libraries' start-up chatter off."""
    import warnings

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                  "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns on every import that the optional `kernels` package is missing.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", category=FutureWarning)


def field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal under it), read from the source."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, doc in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)):
            docs[node.target.id] = " ".join(doc.value.value.split())
    return docs


def add_dataclass_flags(p: Any, cls: type, overrides: dict[str, dict[str, Any]] | None = None,
                        skip: tuple[str, ...] = ()) -> None:
    """One flag per field of a config dataclass: `--field-name`, typed from its annotation
    (choices from a Literal, a list for a tuple, --x/--no-x for a bool), help from its
    docstring. Unset flags stay None, so they leave the field alone. `overrides` changes a
    flag's argparse settings (or names another `flag`); `skip` leaves fields out.

    Hand-written on argparse (what every command here uses, with its one-line errors) rather
    than jsonargparse or simple_parsing: each would replace the whole flag layer to read these
    docstrings and types.
    """
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        spec = _flag_spec(hints[f.name])
        spec["help"] = docs.get(f.name, "").replace("%", "%%")
        spec |= (overrides or {}).get(f.name, {})
        flag = spec.pop("flag", f"--{f.name.replace('_', '-')}")
        p.add_argument(flag, dest=f.name, default=None, **spec)


def _flag_spec(annotation: Any) -> dict[str, Any]:
    import types
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = args[0]
        args = list(typing.get_args(annotation))
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {"choices": list(args), "type": type(args[0])}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        return {"nargs": "+", "type": args[0], "metavar": "X"}
    if annotation in (int, float):
        return {"type": annotation, "metavar": "N" if annotation is int else "X"}
    return {"type": str}


def progress_bar(total: int, desc: str, unit: str, quiet: bool = False) -> Any:
    """A tqdm bar on stderr for long work, shown only to a person at a terminal: hidden when
    stdout or stderr is not a terminal (logs, pipes, tests) or when `quiet` (e.g. --json);
    erased when done."""
    from tqdm import tqdm

    shown = not quiet and sys.stdout.isatty() and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not shown, leave=False,
                file=sys.stderr, dynamic_ncols=True)


# What every command sets before it starts (unless the environment says otherwise): a
# tracking server that is down costs seconds, not MLflow's minutes of retries; MLflow prints
# no run URLs and no download bars (the commands print links to the model-training view and
# draw their own progress); tokenizers do not warn about forks.
COMMAND_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


def command(verbose: bool = False, env: dict[str, str] | None = None
            ) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's `main`: the shared environment defaults (COMMAND_ENV, then `env`),
    logging set-up and quieting of MLflow's loggers, and a UserError anywhere in it printed as
    one line on stderr with its exit code (2)."""
    from trainable.errors import UserError

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            for key, value in (COMMAND_ENV | (env or {})).items():
                os.environ.setdefault(key, value)
            configure_logging(verbose)
            for name in ("mlflow", "alembic", "urllib3"):
                logging.getLogger(name).setLevel(logging.WARNING)
            try:
                return main(*args, **kwargs)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                return e.exit_code

        return run

    return wrap
