"""Clause text the way LexGLUE wrote UNFAIR-ToS: lower-cased Penn-Treebank tokens.

The training clauses have punctuation split off, `` and '' for double quotes, contractions
split (`do n't`, `apple 's`, `can not`), section numbers kept (`14.1 except ...`, `3 use of
...`), URLs and abbreviations (`inc.`, `e.g.`, `u.s.`) whole. A model fine-tuned on that text
sees raw website text as a shift in distribution, so one function writes this form for both
the text the model is shown: the shipped demo set (docs/demo/make_demo.py) and raw Terms of
Service before prediction (analysis.predict, after analysis.clauses splits them).

NLTK supplies the Treebank tokenizer; it needs none of NLTK's downloadable data.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"“”]+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.I)
_URL_TRAILING = ".,;:!?)]}'\"”’"
# Curly double quotes say which side they are on; NLTK keeps them as tokens, mapped to ``
# and '' afterwards (ASCII " is placed by NLTK from its position). Already-normalized ``
# and '' become curly first, so normalizing twice changes nothing.
_QUOTES = str.maketrans({"„": "“", "‟": "“", "«": "“", "»": "”", "″": '"', "‘": "`",
                         "‛": "`", "’": "'", "′": "'", "−": "-", "\u00ad": None})
_QUOTE_TOKENS = {"“": "``", "”": "''"}


@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def normalize(clause: str) -> str:
    """A clause as LexGLUE wrote it: lower-case Treebank tokens joined by single spaces."""
    text = unicodedata.normalize("NFKC", clause).translate(_QUOTES)
    text = text.replace("``", "“").replace("''", "”")
    text = re.sub(r"(?<=\d)[–—](?=\d)", "-", text)  # 2019–2020
    text = re.sub(r"\s*[–—]\s*", " -- ", text)
    # An ASCII single quote opening a word is an opening quote (`), as in the data.
    text = re.sub(r"(?:(?<=^)|(?<=[\s(\[]))'(?=[^\W\d_])(?!(?:s|t|re|ve|ll|m|d)\b)", "`", text)
    # "3. Use of ..." is "3 use of ..." in the data; "14.1 except ..." keeps its number.
    text = re.sub(r"^\s*(\d+)\.\s", r"\1 ", text)
    tokens: list[str] = []
    position = 0
    for match in _URL.finditer(text):
        url = match.group(0).rstrip(_URL_TRAILING)
        tokens += _tokenize(text[position:match.start()])
        tokens.append(url)
        position = match.start() + len(url)
    tokens += _tokenize(text[position:])
    out = " ".join(_QUOTE_TOKENS.get(t, t) for t in tokens).lower()
    out = out.replace("[", "-lsb-").replace("]", "-rsb-").replace("{", "-lcb-").replace("}", "-rcb-")
    return " ".join(out.split())


def _tokenize(text: str) -> list[str]:
    # Treebank splits "$" off a number, as the data has it ("$ 10,000"); "£" and "€" (absent
    # from the data) follow "$".
    text = re.sub(r"([£€])(?=\d)", r"\1 ", text)
    return _word_tokenizer().tokenize(text) if text.strip() else []
