"""Generated unit tokens -> vocoder-ready units, as soon as they are final.

Incremental twin of ``agent.spiritlm.tokens.string_to_units``: a HuBERT unit takes the pitch
and style current when it was generated; units before the first pitch/style take the first
one, so for the Expressive model units wait until both a pitch and a style token have been
seen. At ``flush`` the offline fallbacks apply: a segment with pitch but no style gets a
random common style; a segment with no pitch gets the caller's context pitch (and style, if
it has none), exactly as offline decoding does.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from agent.spiritlm.tokens import MOST_COMMON_STYLES

_UNIT = re.compile(r"\[(Hu|Pi|St)(\d+)\]")


@dataclass
class Unit:
    hubert: int
    pitch: int | None = None
    style: int | None = None


class UnitTokenParser:
    def __init__(self, expressive: bool, context_pitch: int | None = None, context_style: int | None = None):
        self.expressive = expressive
        self.context_pitch, self.context_style = context_pitch, context_style
        self.reset()

    def reset(self) -> None:
        self.current_pitch = self.current_style = None
        self.first_pitch = self.first_style = None
        self.pending: list[Unit] = []

    def feed(self, token: str) -> list[Unit]:
        """Take one token string (e.g. ``[Hu12]``; anything else is ignored); return final units."""
        match = _UNIT.fullmatch(token)
        if match is None:
            return []
        kind, value = match.group(1), int(match.group(2))
        if kind == "Hu":
            self.pending.append(Unit(value, self.current_pitch, self.current_style))
        elif kind == "Pi":
            if self.first_pitch is None:
                self.first_pitch = value
            self.current_pitch = value
        elif self.first_style is None:
            self.first_style = self.current_style = value
        else:
            self.current_style = value
        if not self.expressive or (self.first_pitch is not None and self.first_style is not None):
            return self._release(self.first_pitch, self.first_style)
        return []

    def flush(self) -> list[Unit]:
        """End of the segment: resolve waiting units with the offline fallbacks."""
        if not self.expressive:
            return self._release(None, None)
        if self.first_pitch is not None:  # decoded as the release does: a missing style is a random common one
            pitch, style = self.first_pitch, self.first_style
        else:  # no pitch at all: the context's pitch (and style, if the segment has none)
            pitch = self.context_pitch
            style = self.first_style if self.first_style is not None else self.context_style
        if style is None and pitch is not None:
            style = random.choice(MOST_COMMON_STYLES)
        if pitch is None or style is None:
            return self._release(None, None)  # the vocoder will refuse these, as offline decoding does
        return self._release(pitch, style)

    def _release(self, first_pitch: int | None, first_style: int | None) -> list[Unit]:
        out = []
        for unit in self.pending:
            out.append(Unit(unit.hubert, first_pitch if unit.pitch is None else unit.pitch,
                            first_style if unit.style is None else unit.style))
        self.pending = []
        return out
