"""Clause splitting of raw Terms of Service text (their normalization: test_text.py)."""

from __future__ import annotations

import pytest

from analysis.clauses import split_clauses

pytestmark = pytest.mark.unit

DOCUMENT = """ACME CLOUD, INC. — TERMS OF SERVICE
Last updated: May 15, 2017

1. Acceptance of Terms
By accessing or using the Service, you agree to be bound by these Terms (the “Terms”). If you don’t agree, please don't use the Service.

2. TERMINATION
2.1 We may terminate your account at any time without notice. Acme Cloud, Inc. (“Acme”) may, e.g. for maintenance, suspend
the Service. Contact us at help@acme.example or https://acme.example/help.
(a) you can’t resell the Service;
(b) you won't upload photos, videos, etc. that you do not own.
• Fees are non-refundable [see Section 4.3].
"""


def test_split_clauses_keeps_headings_items_and_sentences_apart():
    clauses = split_clauses(DOCUMENT)
    assert clauses == [
        "ACME CLOUD, INC. — TERMS OF SERVICE",
        "Last updated: May 15, 2017",
        "1. Acceptance of Terms",
        "By accessing or using the Service, you agree to be bound by these Terms (the “Terms”).",
        "If you don’t agree, please don't use the Service.",
        "2. TERMINATION",
        "2.1 We may terminate your account at any time without notice.",
        # a wrapped line joins its sentence; "Inc." and "e.g." end no sentence
        "Acme Cloud, Inc. (“Acme”) may, e.g. for maintenance, suspend the Service.",
        "Contact us at help@acme.example or https://acme.example/help.",
        "(a) you can’t resell the Service;",
        # "etc." followed by a lower-case word ends no sentence either
        "(b) you won't upload photos, videos, etc. that you do not own.",
        "• Fees are non-refundable [see Section 4.3].",
    ]


def test_hard_wrapped_paragraphs_are_joined():
    text = ("Terms of Service\n"
            "We may terminate your account at any time and for any reason under the laws of\n"
            "California, without notice to you. You may close your account\n"
            "at any time.\n")
    assert split_clauses(text) == [
        "Terms of Service",
        "We may terminate your account at any time and for any reason under the laws of "
        "California, without notice to you.",
        "You may close your account at any time."]


def test_split_clauses_of_blank_text_is_empty():
    assert split_clauses("\n \n\t\n") == []


def test_split_clauses_handles_windows_line_ends_and_numbered_sentences():
    text = "3. Governing Law\r\n3.1 These Terms are governed by the laws of England. U.S. users agree too.\r\n"
    assert split_clauses(text) == ["3. Governing Law",
                                   "3.1 These Terms are governed by the laws of England.",
                                   "U.S. users agree too."]
