"""Sentences as token spans: split a text into sentences and find each sentence's tokens.

The white-box analyses (receiver heads, sentence suppression) work on sentences, but models see tokens.
:func:`locate` tokenises the whole text once and maps each sentence to a half-open token range through
the tokenizer's character offsets, so it needs no re-tokenisation of prefixes and no assumption that a
sentence tokenises the same on its own as inside the text.

The rule, for texts where tokens straddle sentence boundaries (a token holding ``".\\n\\nThe"``, or a
leading space): a token belongs to the sentence that holds its first non-whitespace character. Tokens made
of whitespace only, special tokens (BOS) and text between the given sentences belong to no sentence.
Sentences are matched in order, exactly or else up to differences in whitespace.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import fail

if TYPE_CHECKING:
    from jaxtyping import Int

__all__ = ["Sentences", "split", "locate"]


_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*(?:[-*]|\d+[.)])\s)")


def split(text: str) -> list[str]:
    """Split a text into sentences: after ``.``, ``!`` or ``?`` followed by whitespace, at blank lines and list items.

    Whitespace between sentences is dropped; the sentences keep their inner spacing, so each one is found
    verbatim in the text by :func:`locate`. Use your own splitter when you have one (Thought Anchors
    splits reasoning traces the same way, keeping the spacing).

    Example:
        >>> from headkit.sentences import split
        >>> split("First, add 2 and 3. That gives 5!  Check:\\n\\nyes.")
        ['First, add 2 and 3.', 'That gives 5!', 'Check:', 'yes.']
    """
    return [part.strip() for part in _END.split(text) if part.strip()]


class Sentences:
    """A tokenised text and the token span of each of its sentences.

    ``input_ids`` is ``[1, pos]`` (the tokenizer's special tokens included), ``spans[i] = (start, end)`` the
    half-open token range of ``texts[i]``, ``chars[i]`` its character range in ``text``.

    Example:
        >>> import headkit as hk
        >>> s = hk.sentences.locate(hk.models.tiny_tokenizer(), "Tom eats apples . Sarah wears hats .")
        >>> s.spans
        [(1, 5), (5, 9)]
    """

    def __init__(
        self,
        text: str,
        texts: list[str],
        input_ids: Int[torch.Tensor, "1 pos"],
        spans: list[tuple[int, int]],
        chars: list[tuple[int, int]],
    ) -> None:
        self.text, self.texts, self.input_ids, self.spans, self.chars = text, texts, input_ids, spans, chars

    def __len__(self) -> int:
        return len(self.spans)

    @property
    def n_tokens(self) -> int:
        """Tokens in the whole text (special tokens included)."""
        return int(self.input_ids.shape[1])

    def membership(self) -> torch.Tensor:
        """Bool ``[sentence, pos]``: True where a token belongs to a sentence.

        Example:
            >>> import headkit as hk
            >>> s = hk.sentences.locate(hk.models.tiny_tokenizer(), "Tom eats . Sarah wears hats .")
            >>> s.membership().int().tolist()
            [[0, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]]
        """
        member = torch.zeros(len(self.spans), self.n_tokens, dtype=torch.bool)
        for i, (start, end) in enumerate(self.spans):
            member[i, start:end] = True
        return member

    def __repr__(self) -> str:
        return f"Sentences({len(self)} sentences, {self.n_tokens} tokens)"


def locate(tokenizer: Any, text: str, sentences: Sequence[str] | None = None) -> Sentences:
    """Tokenise ``text`` once and find the token span of each sentence (default: :func:`split` of the text).

    Sentences must appear in ``text`` in order; each is matched exactly, else with any run of whitespace
    allowed to differ. A token belongs to the sentence holding its first non-whitespace character, so a
    token that straddles two sentences goes to the first. Needs a fast tokenizer (character offsets).

    Example:
        >>> import headkit as hk
        >>> tok = hk.models.tiny_tokenizer()
        >>> s = hk.sentences.locate(tok, "Tom eats apples .  Sarah  wears hats .", ["Tom eats apples .", "Sarah wears hats ."])
        >>> s.spans, s.chars
        ([(1, 5), (5, 9)], [(0, 17), (19, 38)])
    """
    if not isinstance(text, str) or not text.strip():
        raise fail(f"locate got text {text!r:.60}", "a non-empty string", "pass the full text the model reads")
    texts = split(text) if sentences is None else list(sentences)
    if not texts or any(not isinstance(s, str) or not s.strip() for s in texts):
        bad = next((s for s in texts if not isinstance(s, str) or not s.strip()), None)
        raise fail(
            f"locate got sentences {texts[:3]!r:.120}" + (f" (one is {bad!r})" if texts else ""),
            "one or more non-empty strings, in the order they appear in the text",
            "drop empty sentences, or pass sentences=None to split the text with headkit.sentences.split",
        )
    chars = _find_all(text, texts)
    enc = _encode(tokenizer, text)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    starts = [a for a, _ in chars]
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for t, (start, end) in enumerate(offsets):
        anchor = _anchor(text, start, end)
        i = bisect.bisect_right(starts, anchor) - 1 if anchor is not None else -1
        if i >= 0 and anchor < chars[i][1]:
            first.setdefault(i, t)
            last[i] = t
    for i in range(len(chars)):
        if i not in first:
            raise fail(
                f"locate found no token of its own for sentence {i} ({texts[i]!r:.60}): the tokenizer merged it "
                "into a token of the previous sentence",
                "every sentence to start at least one token",
                "merge this sentence with the previous one",
            )
    spans = [(first[i], last[i] + 1) for i in range(len(chars))]
    return Sentences(text, texts, torch.tensor([ids]), spans, chars)


def _find_all(text: str, sentences: list[str]) -> list[tuple[int, int]]:
    """Character range of each sentence (stripped), searched in order from the end of the previous one."""
    chars: list[tuple[int, int]] = []
    cursor = 0
    for i, sentence in enumerate(sentences):
        words = sentence.split()
        pattern = r"\s+".join(re.escape(w) for w in words)
        found = re.compile(pattern).search(text, cursor)
        if found is None:
            anywhere = re.compile(pattern).search(text)
            where = (
                f"it occurs earlier, at character {anywhere.start()}, before the end of sentence {i - 1}"
                if anywhere is not None
                else "it does not occur in the text"
            )
            raise fail(
                f"locate got sentence {i} {sentence!r:.80}, but {where}",
                "sentences that appear in the text, in order (whitespace may differ)",
                "pass the sentences in text order, exactly as they appear (or sentences=None to split the text)",
            )
        chars.append((found.start(), found.end()))
        cursor = found.end()
    return chars


def _encode(tokenizer: Any, text: str) -> dict[str, Any]:
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise fail(
            f"locate got tokenizer {type(tokenizer).__name__}",
            "a fast (Rust) transformers tokenizer, which reports character offsets",
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)",
        )
    return tokenizer(text, return_offsets_mapping=True)


def _anchor(text: str, start: int, end: int) -> int | None:
    """The character of a token that decides its sentence: its first non-whitespace one (None for none)."""
    for c in range(start, end):
        if not text[c].isspace():
            return c
    return None
