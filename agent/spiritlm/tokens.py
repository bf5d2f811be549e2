"""SpiRit-LM token strings: units <-> "[St81][Pi13][Hu78]..." and prompt/segment rules.

Rules (from the release):
- HuBERT units (24.99 Hz) and pitch units (12.5 Hz) are deduplicated, style units (1 Hz) are not.
- Tokens of the three streams are merged by time ``index / rate``; ties keep St, Pi, Hu order
  (the 24.99 Hz HuBERT rate makes a HuBERT unit land just after the pitch unit it shares a
  frame with).
- Parsing a string back "pre-duplicates" pitch and style to one value per HuBERT unit; units
  before the first pitch/style take the first one. A string with pitch but no style gets a
  random common style (71, 68 or 98), as the release does.
"""

from __future__ import annotations

import random
import re
from typing import Iterator, Literal

from .errors import TokenStringError

TEXT_MARKER = "[Text]"
SPEECH_MARKER = "[Speech]"
HUBERT_RATE = 24.99
PITCH_RATE = 12.5
STYLE_RATE = 1.0
MOST_COMMON_STYLES = (71, 68, 98)
SPEECH_PREFIXES = ("Hu", "Pi", "St")

_UNIT = re.compile(r"\[(Hu|Pi|St)(\d+)\]")
_UNIT_LIKE = re.compile(r"\[(Hu|Pi|St)")
# One lexical item of a generated string, as the release's splitter reads it.
_SEGMENT_ITEM = re.compile(r"\[Text\]|\[Speech\]|\[(?:Hu|Pi|St)[^\]]*\]?|\[|[^\[]+")
_UNIT_TOKEN_TEXT = re.compile(r"\[(?:Hu|Pi|St)\d+\]")

Units = dict[str, str]


def _timed(tokens: list[str], rate: float, dedup: bool) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    previous = None
    for index, token in enumerate(tokens):
        if not dedup or token != previous:
            out.append((token, index / rate))
        previous = token
    return out


def parse_unit_ids(text: str, key: str) -> list[int]:
    """``"1 2 3"`` -> ``[1, 2, 3]`` with an error naming the key on bad input."""
    if not isinstance(text, str):
        raise TokenStringError(f"units[{key!r}] must be a string of space-separated integers")
    try:
        values = [int(v) for v in text.split()]
    except ValueError:
        raise TokenStringError(f"units[{key!r}] must hold space-separated non-negative integers, got {text[:40]!r}") from None
    if any(v < 0 for v in values):
        raise TokenStringError(f"units[{key!r}] holds a negative unit id")
    return values


def units_to_string(units: Units, with_pitch: bool = False, with_style: bool = False) -> str:
    """Merge unit streams into one token string (see module rules)."""
    for key, needed in (("hubert", True), ("pitch", with_pitch), ("style", with_style)):
        if needed:
            if key not in units:
                raise TokenStringError(f"units lack the {key!r} stream")
            parse_unit_ids(units[key], key)
    timed: list[tuple[str, float]] = []
    if with_style:
        timed += _timed([f"[St{u}]" for u in units["style"].split()], STYLE_RATE, dedup=False)
    if with_pitch:
        timed += _timed([f"[Pi{u}]" for u in units["pitch"].split()], PITCH_RATE, dedup=True)
    timed += _timed([f"[Hu{u}]" for u in units["hubert"].split()], HUBERT_RATE, dedup=True)
    timed.sort(key=lambda item: item[1])  # stable: ties keep St, Pi, Hu insertion order
    return "".join(token for token, _ in timed)


def iter_unit_tokens(text: str) -> Iterator[tuple[str, str]]:
    """Yield ``(kind, value)`` for each ``[HuN]``/``[PiN]``/``[StN]``; text between is skipped.

    A token that starts like a unit but is not ``[<kind><digits>]`` is an error.
    """
    position = 0
    for match in _UNIT_LIKE.finditer(text):
        if match.start() < position:
            continue
        unit = _UNIT.match(text, match.start())
        if unit is None:
            snippet = text[match.start():match.start() + 12]
            raise TokenStringError(f"malformed unit token at character {match.start()}: {snippet!r} (expected e.g. [Hu12])")
        position = unit.end()
        yield unit.group(1), unit.group(2)


def string_to_units(text: str, duplicate_hubert_for_multiple_pitch: bool = False) -> Units:
    """Parse a token string back to per-HuBERT-unit streams (see module rules)."""
    hubert: list[str | None] = []
    pitch: list[str | None] = []
    style: list[str | None] = []
    current_pitch = current_style = first_pitch = first_style = first_hubert = last_hubert = None
    previous_was_pitch = False
    for kind, value in iter_unit_tokens(text):
        if kind == "Hu":
            hubert.append(value)
            pitch.append(current_pitch)
            style.append(current_style)
            previous_was_pitch = False
            last_hubert = value
            if first_hubert is None:
                first_hubert = value
        elif kind == "St":
            if current_style is None:
                first_style = value
            current_style = value
        else:
            if duplicate_hubert_for_multiple_pitch and previous_was_pitch:
                hubert.append(last_hubert)
                pitch.append(value)
                style.append(current_style)
            if current_pitch is None:
                first_pitch = value
            current_pitch = value
            previous_was_pitch = True
    if first_pitch is not None and first_style is None:
        first_style = str(random.choice(MOST_COMMON_STYLES))
    units: Units = {"hubert": " ".join(first_hubert if h is None else h for h in hubert)}
    if first_pitch is not None:
        units["pitch"] = " ".join(first_pitch if p is None else p for p in pitch)
    if first_style is not None:
        units["style"] = " ".join(first_style if s is None else s for s in style)
    return units


Modality = Literal["t", "s"]


def split_segments(generated: str) -> list[tuple[str, Modality]]:
    """Split a generated string into maximal text ("t") and speech ("s") runs.

    ``[Text]``/``[Speech]`` markers are dropped; ``[Hu..``/``[Pi..``/``[St..`` up to the next
    ``]`` is speech; anything else (a lone ``[`` included) is text.
    """
    segments: list[tuple[str, Modality]] = []
    for match in _SEGMENT_ITEM.finditer(generated):
        item = match.group(0)
        if item in (TEXT_MARKER, SPEECH_MARKER):
            continue
        kind: Modality = "s" if item[:3] in ("[Hu", "[Pi", "[St") else "t"
        if segments and segments[-1][1] == kind:
            segments[-1] = (segments[-1][0] + item, kind)
        else:
            segments.append((item, kind))
    return segments


def starts_with_speech_token(text: str | None) -> bool:
    """True when the first bracketed token (closing within 10 chars) is a unit token."""
    if text is None or len(text) <= 4 or text[0] != "[":
        return False
    for end in range(4, min(len(text), 11)):
        if text[end] == "]":
            return text[1:3] in SPEECH_PREFIXES
    return False


def ends_with_speech_token(text: str | None) -> bool:
    """True when the string ends with a unit token (opening within the last 11 chars)."""
    if text is None or len(text) <= 4 or text[-1] != "]":
        return False
    for start in range(len(text) - 2, max(-1, len(text) - 12), -1):
        if text[start] == "[" and start + 3 < len(text):
            return text[start + 1:start + 3] in SPEECH_PREFIXES
    return False


def last_speech_run_start(text: str) -> int | None:
    """Character index where the last contiguous run of unit tokens starts (None if none)."""
    start = end = None
    for match in _UNIT_TOKEN_TEXT.finditer(text):
        if end is None or match.start() != end:
            start = match.start()
        end = match.end()
    return start


def count_hubert_tokens(text: str) -> int:
    """The release's count: pieces of ``text.split("[Hu")`` (one more than occurrences)."""
    return len(text.split("[Hu"))
