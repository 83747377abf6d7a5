"""LexGLUE-style normalization of clause text, shared by the demo set and prediction."""

from __future__ import annotations

import csv

import pytest

from trainable.text import normalize

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("raw, expected", [
    # rows of the real training/test files, typed back as a website shows them
    ("Academia, Inc. (“Academia.edu” or “we”) offers a social networking service (the "
     "“Services”) through our website, accessible at academia.edu (the “Site”).",
     "academia , inc. ( `` academia.edu '' or `` we '' ) offers a social networking service "
     "( the `` services '' ) through our website , accessible at academia.edu ( the `` site '' ) ."),
    ("“Member” means a person who completes Academia.edu’s account registration process, as "
     "described under the “Account Registration” section below.",
     "`` member '' means a person who completes academia.edu 's account registration process , "
     "as described under the `` account registration '' section below ."),
    ("14.1 Except to the extent expressly provided in Section 14.2, this Agreement shall be "
     "governed by the laws of Japan.",
     "14.1 except to the extent expressly provided in section 14.2 , this agreement shall be "
     "governed by the laws of japan ."),
    ("(a) You may sign up as a registered user of the Products free of charge (a “Member”).",
     "( a ) you may sign up as a registered user of the products free of charge ( a `` member '' ) ."),
    ("3. Use of Nintendo Account Service", "3 use of nintendo account service"),
    ("You can't use the U.S. version, e.g. if you're under 13, and we won't refund US$10,000.",
     "you ca n't use the u.s. version , e.g. if you 're under 13 , and we wo n't refund us $ 10,000 ."),
    ("You cannot use ‘fees’ — see https://support.oculus.com/terms.",
     "you can not use ` fees ' -- see https://support.oculus.com/terms ."),
    ('Plain "ASCII" quotes [and brackets].', "plain `` ascii '' quotes -lsb- and brackets -rsb- ."),
    # "$" comes off a number in the data; "£" and "€" (not in it) follow "$"
    ("Fees of £50 or €1,000.", "fees of £ 50 or € 1,000 ."),
])
def test_normalize_matches_the_lexglue_preprocessing(raw, expected):
    assert normalize(raw) == expected


def test_normalize_leaves_normalized_text_alone(shared_data_dir):
    import pandas as pd

    frame = pd.read_csv(shared_data_dir / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE,
                        keep_default_na=False)
    texts = [t.strip() for t in frame["text"]]
    same = sum(normalize(t) == t for t in texts)
    # The few that differ carry "us$" or "(415)" that the original tokenizer kept together.
    assert same / len(texts) > 0.99
