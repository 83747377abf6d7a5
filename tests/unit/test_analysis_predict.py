"""`analysis.predict` without a model: reading documents, choosing and ordering clauses."""

from __future__ import annotations

import io

import pytest

from analysis.export import read_threshold, resolve_model_arg
from analysis.predict import Flagged, decode_document, flagged, parse_args, read_document
from trainable.errors import UserError

pytestmark = pytest.mark.unit


def test_read_document_decodes_utf8_and_strips_a_bom(tmp_path):
    path = tmp_path / "terms.txt"
    path.write_bytes("\ufeffWe may “terminate” your account.\n".encode())
    assert read_document(str(path)) == "We may “terminate” your account.\n"
    assert read_document("-", stdin=io.BytesIO(b"From stdin.")) == "From stdin."


@pytest.mark.parametrize("raw, message", [
    (b"", "empty document"),
    (b" \n\t\n", "empty document"),
    (b"PK\x03\x04\x00\x00binary", "binary file"),
    (b"caf\xe9 latin-1", "not UTF-8 text (byte 0xe9 at offset 3)"),
])
def test_bad_documents_are_one_line_errors(raw, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_document("doc.txt", raw)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_document(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="not a file"):
        read_document(str(tmp_path))


def test_flagged_orders_by_probability_per_document_and_keeps_top():
    scored = [Flagged("a", 0, "x", "x", 0.2), Flagged("a", 1, "y", "y", 0.9),
              Flagged("a", 2, "z", "z", 0.6), Flagged("b", 0, "w", "w", 0.7),
              Flagged("a", 3, "v", "v", 0.6)]
    assert [(f.file, f.index) for f in flagged(scored, 0.5)] == [("a", 1), ("a", 2), ("a", 3),
                                                                 ("b", 0)]
    assert [(f.file, f.index) for f in flagged(scored, 0.5, top=1)] == [("a", 1), ("b", 0)]
    assert flagged(scored, 0.95) == []


def test_threshold_file(tmp_path):
    assert read_threshold(tmp_path) == 0.5
    (tmp_path / "threshold.json").write_text('{"threshold": 0.37}')
    assert read_threshold(tmp_path) == 0.37
    (tmp_path / "threshold.json").write_text('{"threshold": 3}')
    with pytest.raises(UserError, match="not a probability"):
        read_threshold(tmp_path)


def test_model_argument_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        resolve_model_arg(str(tmp_path / "missing"), None, tmp_path)
    (tmp_path / "config.json").write_text("{}")  # a plain Hugging Face model folder
    with pytest.raises(UserError, match="not an exported model folder"):
        resolve_model_arg(str(tmp_path), None, tmp_path)
    with pytest.raises(UserError, match="needs --mlflow-uri"):
        resolve_model_arg("models:/unfair-tos-classifier@champion", None, tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["m", "f.txt", "--threshold", "1.5"], "--threshold must be between 0 and 1"),
    (["m", "f.txt", "--top", "0"], "--top must be at least 1"),
    (["m", "-", "-"], "standard input (-) can be read once"),
    (["m"], "the following arguments are required: FILE"),
])
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
