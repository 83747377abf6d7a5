"""Generate the small offline demo data set shipped in ``trainable/demo/``.

The demo files ``train.tsv``, ``validation.tsv`` and ``test.tsv`` mimic the
format of the real UNFAIR-ToS files (LexGLUE preprocessing: lower-cased
Treebank tokens, written by ``trainable.text.normalize``, the function that
also prepares raw Terms of Service for prediction): a header row
``text<TAB>category<TAB>label``, no quoting, ``category`` is ``Other`` (fair,
label 0) or one of the 8 unfair types (label 1).

Nothing here is copied from the real corpus.  Every clause is composed from
hand-written Terms-of-Service style templates with slots (fictional company and
service names, durations, amounts, governing laws, courts, arbitration bodies,
...).  Each fictional company is one "document"; documents are assigned to a
single split, like the real data, so no company appears in two splits.  About
22% of the clauses are unfair (the real data has about 1 in 10), so that a tiny
smoke run has positives to learn from.  The data are for quickstarts and smoke
tests only; scores on them say nothing about the real task.

The output is fully deterministic (a seeded ``random.Random``).  This script is
not part of the installed package; it needs the project installed (for
``trainable.text``).  To regenerate the files in place, run from the repository
root::

    python docs/demo/make_demo.py

or write them elsewhere with ``python docs/demo/make_demo.py --out-dir DIR``.
"""

from __future__ import annotations

import argparse
import random
import re
from functools import lru_cache
from pathlib import Path

from trainable.text import normalize

SEED = 20240611
DEMO_DIR = Path(__file__).resolve().parents[2] / "trainable" / "demo"
SPLIT_FILES = {"train": "train.tsv", "validation": "validation.tsv", "test": "test.tsv"}
HEADER = "text\tcategory\tlabel\n"

LIABILITY = "Limitation of liability"
TERMINATION = "Unilateral termination"
CHANGE = "Unilateral change"
REMOVAL = "Content removal"
BY_USING = "Contract by using"
LAW = "Choice of law"
JURISDICTION = "Jurisdiction"
ARBITRATION = "Arbitration"
UNFAIR_CATEGORIES = [
    LIABILITY,
    TERMINATION,
    CHANGE,
    REMOVAL,
    BY_USING,
    LAW,
    JURISDICTION,
    ARBITRATION,
]

# ---------------------------------------------------------------------------
# Fictional jurisdictions (governing law, courts, arbitration) and companies.
# ---------------------------------------------------------------------------

JURISDICTIONS = {
    "california": dict(
        law="the State of California",
        court="the state and federal courts located in San Francisco County, California",
        seat="San Francisco, California",
        arb="the American Arbitration Association",
        arb_rules="the Consumer Arbitration Rules of the American Arbitration Association",
        arb_city="San Francisco",
        cur="$",
        currency="US dollars",
    ),
    "new_york": dict(
        law="the State of New York",
        court="the state and federal courts located in New York County, New York",
        seat="New York County, New York",
        arb="JAMS",
        arb_rules="the JAMS Streamlined Arbitration Rules and Procedures",
        arb_city="New York",
        cur="$",
        currency="US dollars",
    ),
    "washington": dict(
        law="the State of Washington",
        court="the state or federal courts in King County, Washington",
        seat="King County, Washington",
        arb="the American Arbitration Association",
        arb_rules="the Commercial Arbitration Rules of the American Arbitration Association",
        arb_city="Seattle",
        cur="$",
        currency="US dollars",
    ),
    "delaware": dict(
        law="the State of Delaware",
        court="the state and federal courts located in Wilmington, Delaware",
        seat="Wilmington, Delaware",
        arb="JAMS",
        arb_rules="the JAMS Comprehensive Arbitration Rules and Procedures",
        arb_city="Wilmington",
        cur="$",
        currency="US dollars",
    ),
    "england": dict(
        law="England and Wales",
        court="the courts of England and Wales",
        seat="London, England",
        arb="the London Court of International Arbitration",
        arb_rules="the LCIA Arbitration Rules",
        arb_city="London",
        cur="£",
        currency="pounds sterling",
    ),
    "ireland": dict(
        law="Ireland",
        court="the courts of Dublin, Ireland",
        seat="Dublin, Ireland",
        arb="the International Chamber of Commerce",
        arb_rules="the ICC Rules of Arbitration",
        arb_city="Dublin",
        cur="€",
        currency="euros",
    ),
    "netherlands": dict(
        law="the Netherlands",
        court="the competent court in Amsterdam, the Netherlands",
        seat="Amsterdam, the Netherlands",
        arb="the Netherlands Arbitration Institute",
        arb_rules="the Arbitration Rules of the Netherlands Arbitration Institute",
        arb_city="Amsterdam",
        cur="€",
        currency="euros",
    ),
    "germany": dict(
        law="the Federal Republic of Germany",
        court="the courts of Munich, Germany",
        seat="Munich, Germany",
        arb="the German Arbitration Institute (DIS)",
        arb_rules="the DIS Arbitration Rules",
        arb_city="Munich",
        cur="€",
        currency="euros",
    ),
    "sweden": dict(
        law="Sweden",
        court="the Stockholm District Court",
        seat="Stockholm, Sweden",
        arb="the SCC Arbitration Institute",
        arb_rules="the Rules for Expedited Arbitrations of the SCC Arbitration Institute",
        arb_city="Stockholm",
        cur="€",
        currency="euros",
    ),
    "singapore": dict(
        law="the Republic of Singapore",
        court="the courts of Singapore",
        seat="Singapore",
        arb="the Singapore International Arbitration Centre",
        arb_rules="the SIAC Rules",
        arb_city="Singapore",
        cur="$",
        currency="Singapore dollars",
    ),
}

# All company and service names are invented for this demo; the ``.example``
# domains are reserved and do not resolve.
COMPANIES = {
    "brightloom": dict(
        co="Brightloom",
        legal="Brightloom Labs, Inc.",
        svc="Brightloom",
        product="photo sharing",
        content="photos and albums",
        item="photo",
        users="members",
        site="brightloom.example",
        address="418 Juniper Row, Suite 210, Oakland, California",
        juris="california",
    ),
    "quillspark": dict(
        co="Quillspark",
        legal="Quillspark Software Ltd.",
        svc="Quillspark Notes",
        product="note-taking",
        content="notes and notebooks",
        item="note",
        users="users",
        site="quillspark.example",
        address="7 Ferrier Yard, Bristol",
        juris="england",
    ),
    "tidewell": dict(
        co="Tidewell",
        legal="Tidewell Health B.V.",
        svc="Tidewell",
        product="fitness tracking",
        content="workouts, routes and activity data",
        item="workout",
        users="athletes",
        site="tidewell.example",
        address="Keizerskade 114, Utrecht",
        juris="netherlands",
    ),
    "marrowfin": dict(
        co="Marrowfin",
        legal="Marrowfin Audio, Inc.",
        svc="Marrowfin Radio",
        product="music streaming",
        content="playlists and comments",
        item="playlist",
        users="listeners",
        site="marrowfin.example",
        address="2200 Alder Street, Floor 6, Seattle, Washington",
        juris="washington",
    ),
    "corvella": dict(
        co="Corvella",
        legal="Corvella Marketplace GmbH",
        svc="Corvella",
        product="online marketplace",
        content="listings, photos and reviews",
        item="listing",
        users="buyers and sellers",
        site="corvella.example",
        address="Lindenhofstrasse 9, Augsburg",
        juris="germany",
    ),
    "nimbledge": dict(
        co="Nimbledge",
        legal="Nimbledge Technologies Limited",
        svc="Nimbledge Drive",
        product="cloud storage",
        content="files and folders",
        item="file",
        users="customers",
        site="nimbledge.example",
        address="12 Larkin Quay, Galway",
        juris="ireland",
    ),
    "pebblewick": dict(
        co="Pebblewick",
        legal="Pebblewick Learning Corp.",
        svc="Pebblewick Academy",
        product="online learning",
        content="courses, quizzes and forum posts",
        item="course",
        users="learners",
        site="pebblewick.example",
        address="90 Hollis Avenue, Dover, Delaware",
        juris="delaware",
    ),
    "zentaro": dict(
        co="Zentaro",
        legal="Zentaro Travel AB",
        svc="Zentaro Trips",
        product="travel booking",
        content="trip plans and reviews",
        item="review",
        users="travellers",
        site="zentaro.example",
        address="Norrbackagatan 31, Uppsala",
        juris="sweden",
    ),
    "fablewave": dict(
        co="Fablewave",
        legal="Fablewave Media LLC",
        svc="Fablewave",
        product="messaging and group chat",
        content="messages, stickers and group posts",
        item="message",
        users="users",
        site="fablewave.example",
        address="55 Cobbler Lane, 3rd Floor, Brooklyn, New York",
        juris="new_york",
    ),
    "lumicrate": dict(
        co="Lumicrate",
        legal="Lumicrate Pte. Ltd.",
        svc="Lumicrate Kitchen",
        product="recipe sharing",
        content="recipes, photos and comments",
        item="recipe",
        users="home cooks",
        site="lumicrate.example",
        address="18 Tembusu Crescent, #04-07, Singapore",
        juris="singapore",
    ),
}

# split -> list of (company key, number of clauses, number of unfair clauses)
SPLITS = {
    "train": [
        ("brightloom", 50, 11),
        ("quillspark", 34, 8),
        ("tidewell", 44, 10),
        ("marrowfin", 38, 9),
        ("corvella", 42, 9),
        ("nimbledge", 32, 7),
    ],
    "validation": [
        ("pebblewick", 44, 10),
        ("zentaro", 36, 8),
    ],
    "test": [
        ("fablewave", 38, 9),
        ("lumicrate", 42, 9),
    ],
}

# Slots whose value is drawn afresh for every clause.
CLAUSE_SLOTS = {
    "days": ["7", "14", "30", "thirty (30)", "sixty (60)", "fourteen (14)"],
    "months": ["6", "12", "twelve (12)", "24", "eighteen (18)"],
    "age": ["13", "16", "18"],
    "year": ["2019", "2020", "2021", "2022", "2023"],
    "month": ["January", "March", "April", "June", "August", "October", "November"],
    "dayno": ["1", "3", "9", "14", "21", "28"],
    "small": ["50", "100", "25"],
}

# ---------------------------------------------------------------------------
# Templates.  Each template is (section, order-within-section, text).  The
# section gives the place of the clause in its document (preamble first,
# contact details last); ``[a|b]`` picks one alternative, ``{slot}`` is filled
# from the company context or CLAUSE_SLOTS.  Texts are written in ordinary
# English and converted to the LexGLUE style by ``trainable.text.normalize``.
# ---------------------------------------------------------------------------

S_PREAMBLE, S_ACCEPT, S_DEFS, S_ACCOUNT, S_PAYMENT, S_USE, S_CONTENT, S_IP = range(8)
S_PRIVACY, S_THIRD, S_CHANGES, S_TERMINATION, S_WARRANTY, S_LIABILITY = range(8, 14)
S_INDEMNITY, S_LAW, S_COURTS, S_DISPUTES, S_MISC, S_CONTACT = range(14, 20)

FAIR_TEMPLATES = [
    # preamble and acceptance
    (S_PREAMBLE, 0, "Last updated: {month} {dayno}, {year}"),
    (S_PREAMBLE, 0, "{svc} [Terms of Service|Terms of Use|User Agreement]"),
    (S_PREAMBLE, 1, "Welcome to {svc}[!|.]"),
    (S_PREAMBLE, 2, '{legal} ("{co}", "we", "us" or "our") provides {product} services to [people|individuals and businesses] [around the world|in many countries] through the website located at {site} and our mobile applications (together, the "Service").'),
    (S_PREAMBLE, 3, "Please read these Terms carefully before using the Service[, because they affect your legal rights|]."),
    (S_PREAMBLE, 3, "These Terms [apply to|govern] your access to and use of the {svc} website, mobile applications and related services."),
    (S_PREAMBLE, 3, "[If you have a disability and need|If you need] these Terms in a different format, please contact us and we will do our best to help."),
    (S_ACCEPT, 1, "You can save or print a copy of these Terms at any time from {site}/terms."),
    # definitions
    (S_DEFS, 0, "Definitions[.|]"),
    (S_DEFS, 1, '"Content" means any text, images, audio, video, data or other material that you [upload|post|submit|share] through the Service.'),
    (S_DEFS, 1, '"User" means any person who [accesses|visits] or uses the Service, whether or not they have registered an account.'),
    (S_DEFS, 1, '"Account" means the personal account you create in order to use certain features of {svc}.'),
    (S_DEFS, 1, '"Subscription" means a paid plan that gives you access to [premium|additional] features of {svc} for a set period.'),
    (S_DEFS, 2, 'In these Terms, "including" means "including but not limited to".'),
    (S_DEFS, 2, "Headings in these Terms are for convenience only and do not affect their interpretation."),
    # account
    (S_ACCOUNT, 0, "[Your account|Account registration|Creating an account][.|]"),
    (S_ACCOUNT, 1, "You must be at least {age} years old to [use the Service|create an account|use {svc}]."),
    (S_ACCOUNT, 1, "To use certain features of the Service you must register for an account and provide accurate, current and complete information."),
    (S_ACCOUNT, 1, "You are responsible for keeping your password confidential and for all activity that occurs under your account."),
    (S_ACCOUNT, 1, "Please notify us immediately at {email} if you become aware of any unauthorised use of your account."),
    (S_ACCOUNT, 1, "You may not create more than one personal account[ or share your login details with anyone else|]."),
    (S_ACCOUNT, 1, "If you are using the Service on behalf of a company or other organisation, you confirm that you are authorised to accept these Terms on its behalf."),
    (S_ACCOUNT, 2, "You can update your profile information at any time from the [settings|account] page."),
    # payment
    (S_PAYMENT, 0, "[Fees and payment|Payments and billing|Subscriptions and billing][.|]"),
    (S_PAYMENT, 1, "Some features of {svc} are offered on a paid subscription basis."),
    (S_PAYMENT, 1, "Subscription fees are billed in advance on a [monthly|yearly] basis and are shown in {currency} unless otherwise stated at checkout."),
    (S_PAYMENT, 1, "Prices include any applicable value added tax unless stated otherwise."),
    (S_PAYMENT, 1, "When you purchase a subscription, you authorise us and our payment processor to charge the payment method you provide for the subscription fee, any applicable taxes and any other charges you incur in connection with your use of the Service, and you agree that your subscription will renew automatically at the end of each billing period unless you cancel it before the renewal date through your account settings or by contacting us at {email}."),
    (S_PAYMENT, 2, "You can cancel your subscription at any time from your account settings, and the cancellation will take effect at the end of the current billing period."),
    (S_PAYMENT, 2, "If a payment fails, we will [let you know|notify you] by email and give you {days} days to update your payment details."),
    (S_PAYMENT, 2, "Your free trial lasts {days} days, and we will remind you before it ends."),
    (S_PAYMENT, 2, "Refunds are handled in accordance with our refund policy and your statutory rights as a consumer."),
    # acceptable use (a short bullet list)
    (S_USE, 0, "[Acceptable use|Prohibited conduct|Rules of conduct][.|]"),
    (S_USE, 1, "[When using {svc} you must not|You also undertake not to|In particular, you must not]:"),
    (S_USE, 2, "• use the Service for any unlawful purpose;"),
    (S_USE, 2, "• [upload|post|transmit] viruses, malware or any other harmful code;"),
    (S_USE, 2, "• impersonate any person or misrepresent your affiliation with any person or entity;"),
    (S_USE, 2, "• [collect|harvest] personal information about other {users} without their consent;"),
    (S_USE, 2, "• send spam, chain letters or other unsolicited [messages|communications];"),
    (S_USE, 2, "• copy, modify, decompile or reverse engineer any part of the Service[, except as permitted by law|];"),
    (S_USE, 2, "• use [bots|scrapers|automated scripts] to access {svc} or to create accounts; or"),
    (S_USE, 2.5, "• interfere with or disrupt the [integrity|performance] of the Service or the servers and networks used to provide it."),
    (S_USE, 3, "You are responsible for complying with all laws that apply to you when you use the Service."),
    (S_USE, 3, "You must respect the privacy and rights of other {users} [at all times|when using {svc}]."),
    (S_USE, 3, "You agree not to access or attempt to access any part of the Service by any means other than through the interfaces that we provide, not to probe, scan or test the vulnerability of any system or network connected to the Service, and not to breach or circumvent any security or authentication measures, and you agree to tell us promptly at {email} if you discover a security vulnerability."),
    # user content
    (S_CONTENT, 0, "[Your content|User content|Content you share][.|]"),
    (S_CONTENT, 1, "You keep [all|full] ownership of the {content} you [upload to|post on] {svc}."),
    (S_CONTENT, 1, "By posting {content} on the Service, you grant {co} a non-exclusive, royalty-free, worldwide licence to host, store, reproduce and display that content solely for the purpose of operating and improving the Service."),
    (S_CONTENT, 1, "You can delete your {content} at any time, and [they will be removed from public view|they will no longer be visible to other {users}] within a reasonable period."),
    (S_CONTENT, 1, "You are solely responsible for the {content} you share and for making sure you have the rights needed to share them."),
    (S_CONTENT, 1, "You represent and warrant that you own or have obtained all rights, licences, consents and permissions needed to post your {content} on the Service, and that your {content} do not infringe or misappropriate the intellectual property rights, privacy rights, publicity rights or other legal rights of any third party, and do not contain anything that is defamatory, obscene, threatening, harassing or otherwise unlawful."),
    (S_CONTENT, 2, "If you believe that any content on the Service [infringes your copyright|violates these Terms], you can report it to us using the report button or by writing to {email}."),
    (S_CONTENT, 2, "We do not pre-screen {content} posted by {users}, and the views expressed by {users} do not necessarily reflect our views; however, we welcome reports from our community, and if you see something that you think breaks these Terms or the law, please let us know so that we can look into it and respond in accordance with our community guidelines and applicable law."),
    # intellectual property
    (S_IP, 0, "[Intellectual property|Our intellectual property|Ownership][.|]"),
    (S_IP, 1, "The Service and its original content, features and functionality are and will remain the exclusive property of {legal} and its licensors."),
    (S_IP, 1, "{co}, the {co} logo and other {co} marks are trademarks of {legal} and may not be used without our prior written permission."),
    (S_IP, 1, "Subject to these Terms, we grant you a limited, personal, non-exclusive, non-transferable licence to use the {svc} app on devices that you own or control."),
    (S_IP, 1, "Nothing in these Terms gives you a right to use the {co} name or any of our trademarks, logos or domain names."),
    (S_IP, 2, "Open source software included in the app is licensed under the terms of its own licence, which are available in the app's settings menu."),
    # privacy
    (S_PRIVACY, 0, "[Privacy|Your privacy|Privacy and personal data][.|]"),
    (S_PRIVACY, 1, "Our Privacy Policy explains how we collect, use and share your personal data when you use {svc}."),
    (S_PRIVACY, 1, "You can find our Privacy Policy at {site}/privacy."),
    (S_PRIVACY, 1, "You have the right to [access|correct|delete] the personal data we hold about you, and you can exercise this right by contacting our data protection officer at privacy@{site}."),
    (S_PRIVACY, 1, "We process your personal data as a controller in accordance with the General Data Protection Regulation and other applicable data protection laws, and the Privacy Policy sets out in detail which categories of data we collect, the purposes and legal bases for processing, how long we keep your data, the third parties with whom we share it, and how you can exercise your rights of access, rectification, erasure, restriction, portability and objection."),
    (S_PRIVACY, 2, "We use cookies and similar technologies as described in our Cookie Policy."),
    (S_PRIVACY, 2, "We will never sell your personal data to [third parties|advertisers]."),
    # third parties
    (S_THIRD, 1, "The Service may contain links to third-party websites or services that are not owned or controlled by {co}."),
    (S_THIRD, 1, "Your use of third-party services is subject to the terms and privacy policies of those third parties."),
    (S_THIRD, 1, "If you sign in with a third-party account, such as a social media account, we will receive certain profile information from that provider."),
    # changes (fair)
    (S_CHANGES, 0, "[Changes to these Terms|Updates to the Service][.|]"),
    (S_CHANGES, 1, "We [regularly|sometimes] offer new features, and some of them may be labelled as beta while we test them."),
    (S_CHANGES, 1, "You can view previous versions of these Terms at {site}/terms/archive."),
    # termination (fair, user-side)
    (S_TERMINATION, 0, "[Termination|Closing your account|Ending your relationship with {co}][.|]"),
    (S_TERMINATION, 1, 'You may close your account at any time by [going to the settings page and selecting "delete account"|contacting us at {email}].'),
    (S_TERMINATION, 1, "If you close your account, we will delete your {content} within {days} days, except where we are required by law to keep them."),
    (S_TERMINATION, 1, "Before your account is closed, you can download a copy of your {content} using the export tool."),
    (S_TERMINATION, 2, "Sections of these Terms that by their nature should survive termination will survive, including the sections on intellectual property and indemnity."),
    # warranties
    (S_WARRANTY, 0, "[Disclaimers|Disclaimer of warranties][.|]"),
    (S_WARRANTY, 1, 'The Service is provided "as is" and "as available" without warranties of any kind, either express or implied.'),
    (S_WARRANTY, 1, "We do not warrant that {svc} will be uninterrupted, secure or free from errors."),
    (S_WARRANTY, 1, "{co} does not give medical, legal or financial advice, and any information on the Service is for general purposes only."),
    # liability (fair)
    (S_LIABILITY, 0, "[Limitation of liability|Our responsibility to you|Liability][.|]"),
    (S_LIABILITY, 2, "Nothing in these Terms excludes or limits our liability for death or personal injury caused by our negligence, for fraud, or for any other liability that cannot be excluded by law."),
    (S_LIABILITY, 2, "Because the laws of some countries do not allow certain damages to be excluded, parts of this section may not apply to you."),
    (S_LIABILITY, 2, "We are responsible for foreseeable loss and damage caused by our failure to comply with these Terms or our failure to use reasonable care and skill."),
    # indemnity
    (S_INDEMNITY, 1, "You agree to indemnify and hold harmless {legal}, its affiliates, officers, directors, employees and agents from and against any claims, liabilities, damages, losses and expenses, including reasonable legal fees, arising out of or in any way connected with your breach of these Terms or your violation of any law or the rights of a third party."),
    # law and courts (fair)
    (S_LAW, 0, "[Governing law|Governing law and jurisdiction|Disputes][.|]"),
    (S_LAW, 2, "These Terms do not affect any mandatory consumer protection rights you may have under the laws of the country where you live."),
    (S_COURTS, 2, "If you live in the European Union, you may also bring a claim in the courts of your country of residence."),
    (S_COURTS, 2, "You can also use the European Commission's Online Dispute Resolution platform to resolve a complaint with us."),
    # dispute procedure (fair details)
    (S_DISPUTES, 0, "[Dispute resolution|Resolving disputes][.|]"),
    (S_DISPUTES, 0, "If you have a complaint, please contact our support team first at {email}, as most concerns can be resolved quickly this way."),
    (S_DISPUTES, 2, "The arbitrator will be selected in accordance with the rules of {arb}."),
    (S_DISPUTES, 2, "A party who wants to start arbitration must send the other party a written notice describing the claim and the relief sought."),
    (S_DISPUTES, 2, "If your claim is for less than {cur}{small},000, the arbitration will be conducted on the basis of written submissions unless you ask for a hearing."),
    # miscellaneous
    (S_MISC, 0, "[General|Miscellaneous|Other important terms][.|]"),
    (S_MISC, 1, "If any provision of these Terms is found to be unenforceable, the remaining provisions will remain in full force and effect."),
    (S_MISC, 1, "If we do not enforce a provision of these Terms straight away, that does not mean we have given up our right to enforce it later."),
    (S_MISC, 1, "These Terms, together with our Privacy Policy, make up the entire agreement between you and {co} regarding the Service."),
    (S_MISC, 1, "You may not transfer your rights under these Terms to anyone else without our written consent."),
    (S_MISC, 1, "These Terms are written in English, and any translation is provided for convenience only."),
    (S_MISC, 1, "Notices to you may be sent to the email address associated with your account."),
    # contact
    (S_CONTACT, 0, "[Contact us|How to contact {co}|Contact information][.|]"),
    (S_CONTACT, 1, "If you have any questions about these Terms, please contact us at {email}."),
    (S_CONTACT, 1, "{legal} is registered at {address}."),
    (S_CONTACT, 1, "Customer support is available [Monday to Friday|on working days] [from 9 am to 5 pm|during business hours] local time."),
    (S_CONTACT, 1, "You can also write to us at {address}, or reach our support team through the help centre at {site}/help."),
]

UNFAIR_TEMPLATES = {
    LIABILITY: [
        (S_LIABILITY, 1, "To the fullest extent permitted by law, {co} will not be liable to you for any indirect, special, incidental, punitive or consequential loss, including lost profits, lost revenue, lost data or damage to goodwill, whether or not such loss was foreseeable and however it arises from your use of the Service or your inability to use it."),
        (S_LIABILITY, 1, "In no event will our total liability to you for all claims relating to the Service exceed [{cur}{small}|the greater of {cur}{small} or the amount you paid us in the past {months} months]."),
        (S_LIABILITY, 1, "{co} is not responsible for any loss of or damage to your {content}, and you use the Service at your own risk."),
        (S_LIABILITY, 1, "We [are not liable|will not be liable] for any [interruption|outage] of the Service, or for any loss of data resulting from such [interruptions|outages]."),
        (S_LIABILITY, 1, "{co} accepts no liability for the conduct of other {users} or for any content they post."),
        (S_LIABILITY, 1, "Under no circumstances shall {co} or its affiliates be liable for any damages arising out of [your reliance on|your use of] any information obtained through the Service."),
        (S_LIABILITY, 1, "You expressly understand and agree that {co}, its affiliates, suppliers and licensors will not be liable to you under any theory of liability, whether based in contract, tort, negligence, strict liability or otherwise, for any direct, indirect, incidental, special or exemplary damages, even if {co} has been advised of the possibility of such damages, and that your sole remedy for dissatisfaction with the Service is to stop using it."),
    ],
    TERMINATION: [
        (S_TERMINATION, 1, "We may [suspend|terminate|suspend or terminate] your account at any time, [with or without notice|without notice], for any reason or no reason."),
        (S_TERMINATION, 1, "{co} reserves the right, in its sole discretion, to [terminate|suspend or terminate] your access to all or part of the Service at any time[ and without prior notice|]."),
        (S_TERMINATION, 1, "We may discontinue {svc} or any part of it at any time without liability to you."),
        (S_TERMINATION, 1, "If we believe, in our sole judgement, that you have breached these Terms, we may [immediately |]close your account and delete your {content} without warning."),
        (S_TERMINATION, 1, "{co} may deactivate accounts that have been inactive for more than {months} months[ without notice|]."),
        (S_TERMINATION, 1, "We reserve the right to refuse service to anyone, and to cancel any subscription, at any time for any reason."),
        (S_TERMINATION, 1, "Without limiting any other remedies, {co} may suspend or terminate your account, remove your profile, cancel any pending orders and refuse to provide any current or future use of the Service, at any time and without notice or liability to you, if we suspect, in our sole discretion, that you have violated these Terms or engaged in any conduct that we consider inappropriate, harmful or contrary to the interests of {co} or of other {users}."),
    ],
    CHANGE: [
        (S_CHANGES, 1, "We may [change|modify|amend] these Terms at any time, and your continued use of the Service after the changes are posted constitutes your acceptance of the new Terms."),
        (S_CHANGES, 1, "{co} reserves the right to [modify|update] or replace any part of these Terms at its sole discretion[ and without notice|]."),
        (S_CHANGES, 1, "It is your responsibility to check this page periodically for changes[, as we may not notify you of them|]."),
        (S_CHANGES, 1, "We may change the features of {svc}, or the fees for it, at any time[ without notice to you|]."),
        (S_CHANGES, 1, "The updated Terms will take effect [immediately upon posting|{days} days after they are posted on {site}], and if you do not agree with them you must stop using the Service."),
        (S_CHANGES, 1, "{co} may add, remove or modify features, storage limits and plans from time to time in its discretion."),
        (S_CHANGES, 1, "We reserve the right, at our sole discretion, to rewrite, extend or delete any part of these Terms, our Privacy Policy and our community guidelines whenever we choose, and the new version takes effect as soon as it appears on {site}, so you should check these Terms regularly, because if you keep using the Service after a revision takes effect you will be treated as having accepted the revised Terms."),
    ],
    REMOVAL: [
        (S_CONTENT, 2, "We may remove any content at our sole discretion, at any time and without notice to you[, for any reason|]."),
        (S_CONTENT, 2, "{co} reserves the right to [delete|remove], edit or refuse to publish any {content} that it considers objectionable[, without giving reasons|]."),
        (S_CONTENT, 2, "We may delete {content} that have been stored on our servers for more than {months} months without prior notice."),
        (S_CONTENT, 2, "{co} has the right, but not the obligation, to remove or disable access to any {item} for any reason or no reason, without liability to you."),
        (S_CONTENT, 2, "Any {item} may be taken down at any time if {co}, in its sole judgement, believes that it violates these Terms or is otherwise harmful."),
        (S_CONTENT, 2, "Although we have no obligation to monitor the Service, {co} and its designees may, in their sole and absolute discretion and at any time, pre-screen, refuse, move, edit or remove any {content} that are available on the Service, including anything that we believe violates these Terms, our community guidelines or the rights of others, or that we otherwise find objectionable, and we will have no liability to you for any such action."),
    ],
    BY_USING: [
        (S_ACCEPT, 0, "By [using|accessing] the Service, you agree to [these Terms|be bound by these Terms]."),
        (S_ACCEPT, 0, "If you do not agree to these Terms, [please do not use|you are not permitted to use] {svc}."),
        (S_ACCEPT, 0, "Your use of {svc} constitutes your acceptance of these Terms and of our Privacy Policy."),
        (S_ACCEPT, 0, "By [downloading|installing] the {svc} app or by creating an account, you confirm that you have read and accept these Terms."),
        (S_ACCEPT, 0, "These Terms apply to all visitors, {users} and others who access the Service, and by visiting {site} you accept them."),
        (S_ACCEPT, 0, "By accessing, browsing or otherwise using {site}, the {svc} mobile applications or any of our other services, you acknowledge that you have read, understood and agree to be bound by these Terms and by all other policies referred to in them, and if you do not agree with any part of these Terms, you must not access or use the Service in any way."),
    ],
    LAW: [
        (S_LAW, 1, "These Terms [shall be|are] governed by [and construed in accordance with |]the laws of {law}[, without regard to its conflict of law provisions|]."),
        (S_LAW, 1, "The laws of {law} will apply to any claim arising out of or relating to these Terms or the Service."),
        (S_LAW, 1, "Any dispute between you and {co} will be governed by the laws of {law}[, regardless of where you live|]."),
        (S_LAW, 1, "These Terms and your use of {svc} are subject to the laws of {law}."),
        (S_LAW, 1, "{co}'s Terms are interpreted in accordance with the laws of {law}[, excluding the United Nations Convention on Contracts for the International Sale of Goods|]."),
    ],
    JURISDICTION: [
        (S_COURTS, 1, "You agree that {court} shall have exclusive jurisdiction over any dispute arising from these Terms."),
        (S_COURTS, 1, "Any legal action relating to the Service must be brought exclusively in {court}, and you consent to the personal jurisdiction of those courts."),
        (S_COURTS, 1, "The exclusive place of jurisdiction for all disputes arising out of these Terms is {seat}."),
        (S_COURTS, 1, "You and {co} agree to submit to the exclusive jurisdiction of {court}."),
        (S_COURTS, 1, "Any claim that is not subject to arbitration shall be brought only in {court}, and you waive any objection to venue there."),
    ],
    ARBITRATION: [
        (S_DISPUTES, 1, "You agree that any dispute between you and {co} shall be resolved exclusively by final and binding arbitration[ administered by {arb}|]."),
        (S_DISPUTES, 1, "Any claim arising out of or relating to these Terms will be settled by binding arbitration in {arb_city} under {arb_rules}."),
        (S_DISPUTES, 1, "You and {co} agree that disputes will be resolved by individual arbitration, and you waive the right to a trial by jury or to take part in a class action."),
        (S_DISPUTES, 1, "All disputes shall be finally settled by arbitration under {arb_rules}, and the decision of the arbitrator shall be final and binding on both parties."),
        (S_DISPUTES, 1, "Instead of going to court, you agree to resolve any claim against {co} through binding arbitration[, except for claims that qualify for small claims court|]."),
        (S_DISPUTES, 1, "Please read this section carefully because it requires you and {co} to resolve all disputes, claims and controversies arising out of or relating to these Terms or the Service by binding individual arbitration administered by {arb} in accordance with {arb_rules}, rather than in court, and it limits the ways in which you can seek relief from us, including by waiving your right to a jury trial and to participate in any class or representative proceeding."),
    ],
}

# ---------------------------------------------------------------------------
# Template expansion.
# ---------------------------------------------------------------------------

_ALT_RE = re.compile(r"\[([^\[\]]*)\]")
_SLOT_RE = re.compile(r"\{(\w+)\}")


def expand(template: str, ctx: dict, rng: random.Random) -> str:
    """Fill ``[a|b]`` alternatives and ``{slot}`` slots of one template."""
    text = _ALT_RE.sub(lambda m: rng.choice(m.group(1).split("|")), template)

    def slot(m: re.Match) -> str:
        name = m.group(1)
        if name in ctx:
            return ctx[name]
        return rng.choice(CLAUSE_SLOTS[name])

    return _SLOT_RE.sub(slot, text)


def company_context(key: str) -> dict:
    company = dict(COMPANIES[key])
    ctx = dict(JURISDICTIONS[company.pop("juris")])
    ctx.update(company)
    ctx["email"] = f"support@{company['site']}"
    return ctx


# ---------------------------------------------------------------------------
# Document and split generation.
# ---------------------------------------------------------------------------


# Drawing retries until a text is new, so the same text comes up again and again (about 11,000
# draws of 400 distinct texts): normalize each once.
_normalize = lru_cache(maxsize=None)(normalize)


def _draw(templates, ctx, rng, seen, tries=6):
    """Expand the first template (in the given order) that yields an unseen text."""
    for template in templates:
        section, order, pattern = template
        for _ in range(tries):
            text = _normalize(expand(pattern, ctx, rng))
            if text not in seen:
                seen.add(text)
                return template, text
    raise RuntimeError("ran out of distinct clauses; add templates")


def make_document(key, n_clauses, unfair_categories, rng, seen):
    """Return the clauses of one fictional company's Terms, in document order."""
    ctx = company_context(key)
    rows = []  # (section, order, tiebreak, text, category)

    used_unfair = {cat: [] for cat in UNFAIR_CATEGORIES}
    for cat in unfair_categories:
        pool = [t for t in UNFAIR_TEMPLATES[cat] if t not in used_unfair[cat]]
        rng.shuffle(pool)
        template, text = _draw(pool, ctx, rng, seen)
        used_unfair[cat].append(template)
        rows.append((template[0], template[1], rng.random(), text, cat))

    pool = list(FAIR_TEMPLATES)
    rng.shuffle(pool)
    for _ in range(n_clauses - len(unfair_categories)):
        template, text = _draw(pool, ctx, rng, seen)
        pool.remove(template)
        rows.append((template[0], template[1], rng.random(), text, "Other"))

    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return [(text, cat) for _, _, _, text, cat in rows]


def build_splits(seed: int = SEED) -> dict:
    """Return {split: [(text, category), ...]} for all three splits."""
    rng = random.Random(seed)
    seen: set = set()
    out = {}
    for split, docs in SPLITS.items():
        n_unfair = sum(n for _, _, n in docs)
        # every category at least once per split (several times in train),
        # the remainder drawn at random, then dealt out to the documents
        cats = UNFAIR_CATEGORIES * (n_unfair // len(UNFAIR_CATEGORIES))
        cats += rng.sample(UNFAIR_CATEGORIES, n_unfair - len(cats))
        rng.shuffle(cats)
        clauses = []
        start = 0
        for key, n_clauses, k in docs:
            clauses += make_document(key, n_clauses, cats[start : start + k], rng, seen)
            start += k
        out[split] = clauses
    return out


def write_demo(out_dir) -> dict:
    """Write train/validation/test TSV files into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, clauses in build_splits().items():
        path = out_dir / SPLIT_FILES[split]
        lines = [HEADER]
        for text, category in clauses:
            assert "\t" not in text and "\n" not in text
            lines.append(f"{text}\t{category}\t{int(category != 'Other')}\n")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(lines))
        paths[split] = path
    return paths


def main(out_dir=None) -> dict:
    """Regenerate the demo files in ``out_dir`` (default: ``trainable/demo/``)."""
    paths = write_demo(DEMO_DIR if out_dir is None else out_dir)
    for split, path in paths.items():
        with open(path, encoding="utf-8") as f:
            rows = [line.rstrip("\n").split("\t") for line in f][1:]
        n_unfair = sum(r[2] == "1" for r in rows)
        print(f"{split}: {len(rows)} clauses, {n_unfair} unfair -> {path}")
    return paths


def _cli(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir", default=None, help="output directory (default: trainable/demo/)"
    )
    main(parser.parse_args(argv).out_dir)


if __name__ == "__main__":
    _cli()
