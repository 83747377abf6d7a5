"""Raw Terms of Service text to clauses, one clause per heading, list item or sentence.

`predict` then writes each clause the way LexGLUE's UNFAIR-ToS was written, with
`trainable.text.normalize`: the one normalizer, which also wrote the shipped demo set.

NLTK supplies the Punkt sentence splitter; it needs none of NLTK's downloadable data (it
runs with the abbreviation list below instead of a trained model).
"""

from __future__ import annotations

import re
from functools import lru_cache

# Abbreviations a sentence must not end at. Punkt's pretrained English model would come
# from nltk_data, a download this tool cannot rely on; ToS text needs few of them.
ABBREVIATIONS = frozenset({
    "e.g", "i.e", "inc", "ltd", "co", "corp", "llc", "l.l.c", "plc", "gmbh", "s.a", "b.v",
    "u.s", "u.k", "u.s.a", "e.u", "no", "nos", "sec", "art", "para", "cl", "vs", "v", "mr",
    "mrs", "ms", "dr", "st", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "approx", "incl", "min", "max", "esp", "cf", "al", "ca",
})

# A list marker opening a line: "1.", "1.1", "14.2.3", "(a)", "a)", "(iv)", "iv.", bullets.
_MARKER = re.compile(
    r"^\s*(?:\(?\d+(?:\.\d+)*[.)]?|\([a-zA-Z]{1,4}\)|[a-zA-Z][.)]|[ivxlcIVXLC]{1,6}[.)]"
    r"|[•·▪◦‣*–—-])(?=\s)")
_TERMINAL = re.compile(r"[.!?:;][\"'”’)\]]*$")
@lru_cache(maxsize=1)
def _sentence_splitter():
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    params = PunktParameters()
    params.abbrev_types = set(ABBREVIATIONS)
    return PunktSentenceTokenizer(params)


def split_clauses(document: str) -> list[str]:
    """The clauses of a raw document: headings and list items alone, paragraphs by sentence."""
    clauses: list[str] = []
    for unit in _units(document):
        clauses.extend(_sentences(unit))
    return clauses


def _units(document: str) -> list[str]:
    """Lines joined where a sentence wraps onto the next line; blank lines, headings and list
    items start a new unit."""
    units: list[str] = []
    current = ""
    for raw in document.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = " ".join(raw.split())
        if not line:
            if current:
                units.append(current)
            current = ""
            continue
        # A line continues the previous one when that one has no final punctuation, is no
        # heading, and this one opens no list item (or starts in lower case).
        wraps = (current and not _TERMINAL.search(current) and not _MARKER.match(line)
                 and not _all_caps(current) and (line[0].islower() or not _is_heading(current)))
        if wraps:
            current = f"{current} {line}"
        else:
            if current:
                units.append(current)
            current = line
    if current:
        units.append(current)
    return units


def _all_caps(line: str) -> bool:
    letters = [c for c in line if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters)


def _is_heading(line: str) -> bool:
    """Short, unpunctuated lines (`TERMINATION`, `3. Your Account`) are headings."""
    body = _MARKER.sub("", line, count=1).strip()
    return _all_caps(body) or len(body.split()) <= 10 and not _TERMINAL.search(body)


def _sentences(unit: str) -> list[str]:
    if _is_heading(unit):
        return [unit]
    marker = _MARKER.match(unit)
    prefix, body = (unit[:marker.end()], unit[marker.end():].strip()) if marker else ("", unit)
    # Punkt would take "1." for the end of a sentence; the marker goes back on afterwards.
    pieces = _sentence_splitter().tokenize(body) if body else []
    merged: list[str] = []
    for piece in pieces:
        # A real sentence starts with a capital, a digit or a quote; a lower-case start means
        # Punkt broke after an abbreviation it does not know ("etc. that you post").
        if merged and (piece[0].islower() or piece[0] in ",;)"):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    if not merged:
        return [prefix.strip()] if prefix.strip() else []
    if prefix:
        merged[0] = f"{prefix.strip()} {merged[0]}"
    return merged
