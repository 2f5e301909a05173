"""Wording that reads as a normal study, which Loupe never writes.

Loupe's detector misses lesions, and how often is measured (``tools.detection.performance``): a
search that finds nothing is "nothing reached the threshold", never "normal", "no abnormality"
or "no further imaging". The phrases live in one place, ``prompts/negatives.toml``; this module
finds them in a model's answer or report wording so that the text can be corrected or refused
before anyone reads it. A phrase that is denied ("this is not a normal read") does not count.
The clinician may write what they like: only text Loupe or a model wrote is checked.
"""

from __future__ import annotations

import re
from functools import cache

from prompts import load_table

#: Sentences end at . ! ? or a line break (a bullet line is a sentence of its own).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@cache
def _patterns() -> tuple[list[re.Pattern[str]], re.Pattern[str]]:
    table = load_table("negatives.toml")["normal_study"]
    return ([re.compile(p, re.IGNORECASE) for p in table["patterns"]],
            re.compile(table["negation"], re.IGNORECASE))


def normal_study_phrases(text: str) -> list[str]:
    """The phrases of ``text`` that read as a normal result (denied ones excepted), in order."""
    patterns, negation = _patterns()
    found: list[tuple[int, str]] = []
    for pattern in patterns:
        for match in pattern.finditer(text):
            if not negation.search(text[max(0, match.start() - 40):match.start()]):
                found.append((match.start(), match.group(0)))
    return [phrase for _, phrase in sorted(found)]


def without_normal_wording(text: str) -> tuple[str, list[str]]:
    """``text`` without the sentences that read as a normal result, and the phrases removed."""
    phrases = normal_study_phrases(text)
    if not phrases:
        return text, []
    pieces = re.split(f"({_SENTENCE_END.pattern})", text)
    sentences, separators = pieces[0::2], [*pieces[1::2], ""]
    kept = "".join(sentence + separator for sentence, separator in zip(sentences, separators, strict=True)
                   if not normal_study_phrases(sentence))
    return kept.strip(), phrases
