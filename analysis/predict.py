"""Flag potentially unfair clauses in raw Terms of Service documents.

    python -m analysis.predict models/champion terms.txt
    python -m analysis.predict models:/unfair-tos-classifier@champion terms.txt --json
    curl -s https://example.com/terms.txt | python -m analysis.predict models/champion -

Each document is split into clauses and each clause normalized the way the training data
was (lower-case Treebank tokens); clauses scoring at least the threshold (the one chosen on
validation and saved with the export, unless --threshold) are printed, most likely first.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from trainable.cli import ArgumentParser, command
from trainable.errors import UserError


@dataclass(frozen=True)
class Flagged:
    """One scored clause of a document."""

    file: str
    index: int
    """Position of the clause in the document (0-based)."""
    text: str
    normalized: str
    probability: float


def read_document(name: str, stdin: BinaryIO | None = None) -> str:
    """A document's text (`-`: standard input); one-line errors for missing, empty or binary."""
    if name == "-":
        raw = (stdin or sys.stdin.buffer).read()
    else:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{name}: no such file" if not path.exists() else f"{name}: not a file")
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise UserError(f"{name}: cannot read ({e.strerror})") from None
    return decode_document(name, raw)


def decode_document(name: str, raw: bytes) -> str:
    """UTF-8 text of a document; binary data (NUL bytes, invalid UTF-8) and empty ones refused."""
    if b"\x00" in raw:
        raise UserError(f"{name}: binary file (NUL bytes), expected plain text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{name}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                        f"{e.start})") from None
    if not text.strip():
        raise UserError(f"{name}: empty document")
    return text


def score_documents(documents: dict[str, str], model: Any, tokenizer: Any, cfg: Any,
                    precision: str | None = None, quiet: bool = False) -> list[Flagged]:
    """Every clause of every document with its P(unfair), in document order; a progress bar
    on a terminal while a long document is scored (unless `quiet`)."""
    from analysis.clauses import split_clauses
    from trainable.cli import progress_bar
    from trainable.inference import predict_proba
    from trainable.text import normalize

    rows: list[tuple[str, int, str, str]] = []
    for name, text in documents.items():
        clauses = split_clauses(text)
        if not clauses:
            raise UserError(f"{name}: no clauses found")
        rows += [(name, i, clause, normalize(clause)) for i, clause in enumerate(clauses)]
    with progress_bar(len(rows), "scoring clauses", "clause", quiet=quiet) as bar:
        probs = predict_proba(model, tokenizer, [r[3] for r in rows], cfg.max_length,
                              precision=precision, progress=bar.update)
    return [Flagged(*row, probability=float(p)) for row, p in zip(rows, probs, strict=True)]


def flagged(scored: list[Flagged], threshold: float, top: int | None = None) -> list[Flagged]:
    """Clauses at or above `threshold`, most likely first; at most `top` per document."""
    out: list[Flagged] = []
    for name in dict.fromkeys(s.file for s in scored):
        hits = sorted((s for s in scored if s.file == name and s.probability >= threshold),
                      key=lambda s: (-s.probability, s.index))
        out += hits[:top] if top is not None else hits
    return out


def parse_args(argv: Sequence[str] | None = None) -> Any:
    """The command line."""
    p = ArgumentParser(prog="python -m analysis.predict",
                       description="Flag potentially unfair clauses in Terms of Service texts.")
    p.add_argument("model", metavar="MODEL",
                   help="exported folder (analysis.best --export-dir) or models:/NAME@ALIAS")
    p.add_argument("files", nargs="+", metavar="FILE", help="plain-text document; - for stdin")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="flag clauses with P(unfair) >= T (default: the exported threshold)")
    p.add_argument("--top", type=int, metavar="N", help="at most N clauses per document")
    p.add_argument("--mlflow-uri", metavar="URI",
                   help="tracking server for models:/ URIs (default: $MLFLOW_TRACKING_URI)")
    args = p.parse_args(argv)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        p.error(f"--threshold must be between 0 and 1 (got {args.threshold})")
    if args.top is not None and args.top < 1:
        p.error(f"--top must be at least 1 (got {args.top})")
    if args.files.count("-") > 1:
        p.error("standard input (-) can be read once")
    return args


def run(args: Any) -> tuple[list[Flagged], list[Flagged], float, str]:
    """(all scored clauses, flagged ones, threshold, model folder): the function behind main()."""
    from analysis.export import read_threshold, resolve_model_arg
    from trainable.inference import inference_precision, load_trained

    # Documents first: a bad file should not cost a model load.
    documents = {name: read_document(name) for name in args.files}
    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix="analysis-predict-") as tmp:
        folder = resolve_model_arg(args.model, uri, Path(tmp))
        model, tokenizer, cfg = load_trained(folder)
        threshold = args.threshold if args.threshold is not None else read_threshold(folder)
        precision = inference_precision(cfg, next(model.parameters()).device.type)
        scored = score_documents(documents, model, tokenizer, cfg, precision,
                                 quiet=args.json)
    return scored, flagged(scored, threshold, args.top), threshold, str(args.model)


@command()
def main(argv: Sequence[str] | None = None) -> int:
    """Print the potentially unfair clauses of each document."""
    args = parse_args(argv)
    _quiet()
    scored, hits, threshold, model = run(args)
    if args.json:
        print(json.dumps({"model": model, "threshold": threshold,
                          "clauses": [asdict(h) for h in hits]}, indent=2, ensure_ascii=False))
        return 0
    for name in args.files:
        total = sum(s.file == name for s in scored)
        mine = [h for h in hits if h.file == name]
        label = "<stdin>" if name == "-" else name
        print(f"{label}: {len(mine)} of {total} clauses potentially unfair "
              f"(P(unfair) >= {threshold:.3f})")
        for h in mine:
            print(f"  {h.probability:.3f}  [{h.index}] {h.text}")
    return 0


def _quiet() -> None:
    import logging
    import warnings

    for name in ("mlflow", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)


if __name__ == "__main__":
    sys.exit(main())
