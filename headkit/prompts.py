"""Tokenised prompt sets: single-token answers (left-padded) and target continuations (right-padded).

:class:`Task` holds single-token answers, left-padded (the demo and the Monte Carlo study); :func:`copy_task`
tokenises the copy task of seed 003 (:data:`headkit.data.COPY_PROMPTS`). :class:`Examples` holds prompts
with target continuations of any length, right-padded with a mask on the target tokens, built by
:func:`examples` from pairs, records or a ``datasets`` object (the built-in pair sets are in
:mod:`headkit.data`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import describe, fail
from headkit.data import COPY_PROMPTS

if TYPE_CHECKING:
    from jaxtyping import Bool, Int

Pairs = Sequence[tuple[str, str]]

__all__ = ["Task", "copy_task", "Examples", "examples", "left_padded", "single_tokens"]


@dataclass(frozen=True)
class Task:
    """A tokenized, left-padded prompt set with one target token per prompt.

    ``first_sentence`` marks each prompt's first sentence (the text being copied), BOS excluded.

    Example:
        >>> import headkit as hk
        >>> from headkit.prompts import copy_task
        >>> task = copy_task(hk.models.tiny_tokenizer())
        >>> task.prompts[0], task.answers[0], task.first_sentence[0].sum().item()
        ('Tom eats apples. Tom eats', ' apples', 4)
    """

    prompts: tuple[str, ...]
    answers: tuple[str, ...]
    input_ids: Int[torch.Tensor, "n pos"]
    attention_mask: Int[torch.Tensor, "n pos"]
    targets: Int[torch.Tensor, " n"]
    first_sentence: Bool[torch.Tensor, "n pos"]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, keep: Bool[torch.Tensor, " n"]) -> Task:
        """The prompts where ``keep`` is True."""
        rows = keep.nonzero()[:, 0].tolist()
        return Task(
            prompts=tuple(self.prompts[i] for i in rows),
            answers=tuple(self.answers[i] for i in rows),
            input_ids=self.input_ids[rows],
            attention_mask=self.attention_mask[rows],
            targets=self.targets[rows],
            first_sentence=self.first_sentence[rows],
        )


def copy_task(tokenizer: Any, prompts: tuple[tuple[str, str], ...] = COPY_PROMPTS) -> Task:
    """Tokenize the copy task (left-padded). A multi-token answer counts as its first token.

    Example:
        >>> import headkit as hk
        >>> from headkit.prompts import copy_task
        >>> task = copy_task(hk.models.tiny_tokenizer())
        >>> len(task), task.input_ids.shape[0]
        (59, 59)
    """
    if not prompts:
        raise fail("copy_task got no prompts", "(prompt, answer) pairs", "pass COPY_PROMPTS or your own pairs")
    texts = [p for p, _ in prompts]
    answers = [a for _, a in prompts]
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    firsts = [len(tokenizer(t.split(". ")[0] + ".")["input_ids"]) for t in texts]
    width = max(map(len, encoded))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(texts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(texts), width, dtype=torch.long)
    first = torch.zeros(len(texts), width, dtype=torch.bool)
    bos = 1 if tokenizer.bos_token_id is not None and encoded[0][:1] == [tokenizer.bos_token_id] else 0
    for row, (tokens, n_first) in enumerate(zip(encoded, firsts)):
        start = width - len(tokens)
        ids[row, start:] = torch.tensor(tokens)
        mask[row, start:] = 1
        first[row, start + bos : start + n_first] = True
    targets = torch.tensor([tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in answers])
    return Task(tuple(texts), tuple(answers), ids, mask, targets, first)


# ------------------------------------------------------------------------------------------------- continuations
@dataclass(frozen=True)
class Examples:
    """Prompts with target continuations, tokenised and right-padded; only target tokens are scored.

    ``target_mask`` is True on the target tokens. The logits that predict them sit one position earlier:
    :meth:`scored` gives those positions and the tokens they must predict. Padding is never a target.

    Example:
        >>> import headkit as hk
        >>> from headkit.prompts import examples
        >>> ex = examples(hk.models.tiny_tokenizer(), [("Tom eats", " apples"), ("He bought milk .", " Tom eats")])
        >>> ex.input_ids.shape, ex.target_mask.sum(-1).tolist()
        (torch.Size([2, 7]), [1, 2])
    """

    prompts: tuple[str, ...]
    targets: tuple[str, ...]
    input_ids: Int[torch.Tensor, "n pos"]
    attention_mask: Int[torch.Tensor, "n pos"]
    target_mask: Bool[torch.Tensor, "n pos"]

    def __len__(self) -> int:
        return len(self.prompts)

    def rows(self, index: Sequence[int] | torch.Tensor) -> Examples:
        """The examples at ``index`` (repeats allowed), with padding columns no row needs trimmed off."""
        index = torch.as_tensor(index, dtype=torch.long)
        mask = self.attention_mask[index]
        width = int(mask.sum(-1).max()) if len(index) else 0
        return Examples(
            tuple(self.prompts[i] for i in index.tolist()),
            tuple(self.targets[i] for i in index.tolist()),
            self.input_ids[index, :width],
            mask[:, :width],
            self.target_mask[index, :width],
        )

    def concat(self, other: Examples) -> Examples:
        """These examples, then ``other``'s, right-padded to a common width.

        Example:
            >>> from headkit.prompts import Examples
            >>> a, b = Examples.from_tokens([[1, 5]], [[6]]), Examples.from_tokens([[1]], [[7, 8, 9]])
            >>> a.concat(b).input_ids.tolist()
            [[1, 5, 6, 0], [1, 7, 8, 9]]
        """
        width = max(self.input_ids.shape[1], other.input_ids.shape[1])

        def padded(name: str) -> torch.Tensor:
            parts = [getattr(e, name) for e in (self, other)]
            return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in parts])

        return Examples(
            self.prompts + other.prompts,
            self.targets + other.targets,
            padded("input_ids"),
            padded("attention_mask"),
            padded("target_mask"),
        )

    def scored(self) -> tuple[Bool[torch.Tensor, "n pos"], Int[torch.Tensor, " m"]]:
        """Where the logits predict a target token (``[n, pos]``), and those tokens (row-major order)."""
        positions = torch.zeros_like(self.target_mask)
        positions[:, :-1] = self.target_mask[:, 1:]
        return positions, self.input_ids[:, 1:][self.target_mask[:, 1:]]

    @staticmethod
    def from_tokens(
        prompt_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
        pad_id: int = 0,
        prompts: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
    ) -> Examples:
        """Examples from token ids: each row is its prompt's ids then its target's ids, right-padded.

        Example:
            >>> from headkit.prompts import Examples
            >>> Examples.from_tokens([[1, 5], [1, 6, 7]], [[8, 9], [4]]).target_mask.int().tolist()
            [[0, 0, 1, 1], [0, 0, 0, 1]]
        """
        if len(prompt_ids) == 0 or len(prompt_ids) != len(target_ids):
            raise fail(
                f"Examples got {len(prompt_ids)} prompts and {len(target_ids)} targets",
                "one target per prompt, at least one pair",
                "pass matching, non-empty lists",
            )
        for i, (p, t) in enumerate(zip(prompt_ids, target_ids)):
            if len(t) == 0 or len(p) == 0:
                which = "target" if len(t) == 0 else "prompt"
                text = (targets if which == "target" else prompts) or ()
                shown = f" ({text[i]!r})" if i < len(text) else ""
                raise fail(
                    f"example {i} has an empty {which} after tokenisation{shown}",
                    f"at least one {which} token per example (a {which} that tokenises to nothing cannot be scored)",
                    f"drop example {i} or give it a non-empty {which}",
                )
        width = max(len(p) + len(t) for p, t in zip(prompt_ids, target_ids))
        n = len(prompt_ids)
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        target = torch.zeros(n, width, dtype=torch.bool)
        for row, (p, t) in enumerate(zip(prompt_ids, target_ids)):
            ids[row, : len(p) + len(t)] = torch.tensor([*p, *t])
            mask[row, : len(p) + len(t)] = 1
            target[row, len(p) : len(p) + len(t)] = True
        def texts(given: Sequence[str] | None, tokens: Sequence[Sequence[int]]) -> tuple[str, ...]:
            return tuple(given) if given is not None else tuple(" ".join(map(str, t)) for t in tokens)

        return Examples(texts(prompts, prompt_ids), texts(targets, target_ids), ids, mask, target)


def examples(tokenizer: Any, data: Any, *, prompt: str = "prompt", target: str = "target") -> Examples:
    """Tokenise prompts with targets: (prompt, target) pairs, records, columns, or a ``datasets.Dataset``.

    The prompt is tokenised as usual (BOS included if the tokenizer adds one) and the target on its own
    without special tokens, then appended: the boundary is exact, as with the reference CHG code's marker
    token. Start targets with the space they need (" Paris"). Rows are right-padded.

    Example:
        >>> import headkit as hk
        >>> from headkit.prompts import examples
        >>> tok = hk.models.tiny_tokenizer()
        >>> len(examples(tok, [{"prompt": "Tom eats", "target": " apples"}]))
        1
        >>> len(examples(tok, {"q": ["Tom eats", "He bought"], "a": [" apples", " milk"]}, prompt="q", target="a"))
        2
    """
    if isinstance(data, Examples):
        return data
    pairs = _pairs(data, prompt, target)
    prompt_ids = [tokenizer(p)["input_ids"] for p, _ in pairs]
    target_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for _, t in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return Examples.from_tokens(prompt_ids, target_ids, pad, [p for p, _ in pairs], [t for _, t in pairs])


def _pairs(data: Any, prompt: str, target: str) -> list[tuple[str, str]]:
    columns = getattr(data, "column_names", None)  # a datasets.Dataset
    if isinstance(data, Mapping) or columns is not None:
        names = list(columns) if columns is not None else list(data)
        if prompt not in names or target not in names:
            raise fail(
                f"examples got columns {names}",
                f"a {prompt!r} column and a {target!r} column",
                "name them with examples(tok, data, prompt=..., target=...)",
            )
        pairs = list(zip(data[prompt], data[target]))
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        pairs = []
        for i, item in enumerate(data):
            if isinstance(item, Mapping):
                if prompt not in item or target not in item:
                    raise fail(
                        f"record {i} has keys {sorted(item)}",
                        f"keys {prompt!r} and {target!r}",
                        "name them with examples(tok, data, prompt=..., target=...)",
                    )
                pairs.append((item[prompt], item[target]))
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                pairs.append((item[0], item[1]))
            else:
                raise fail(f"examples got item {i}: {item!r:.60}", "(prompt, target) pairs or records", "pass pairs")
    else:
        raise fail(
            f"examples got a {type(data).__name__}",
            "(prompt, target) pairs, records with prompt/target keys, a mapping of columns, or a datasets.Dataset",
            "e.g. examples(tok, [(\"The capital of France is\", \" Paris\")])",
        )
    if not pairs:
        raise fail("examples got no examples", "at least one (prompt, target) pair", "pass a non-empty set")
    for i, (p, t) in enumerate(pairs):
        if not isinstance(p, str) or not isinstance(t, str):
            raise fail(
                f"example {i} is ({p!r:.40}, {t!r:.40})", "a prompt string and a target string", "convert to str"
            )
    return pairs


# ------------------------------------------------------------------------------------------------- single-token answers
def left_padded(
    prompts: Any, attention_mask: Any, tok: Any
) -> tuple[Int[torch.Tensor, "prompt pos"], Int[torch.Tensor, "prompt pos"]]:
    """Prompts as left-padded token ids and their attention mask: strings are tokenised, ids are checked.

    Last-token readouts read the last column, so every row must end in a real token.

    Example:
        >>> import headkit as hk
        >>> from headkit.prompts import left_padded
        >>> ids, mask = left_padded(["Tom eats apples", "He eats"], None, hk.models.tiny_tokenizer())
        >>> mask.tolist()
        [[1, 1, 1, 1], [0, 1, 1, 1]]
    """
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2 or prompts.shape[0] == 0:
            raise fail(f"evaluate got prompts {describe(prompts)}", "token ids [n_prompts, pos], n >= 1",
                       "tokenise the prompts into one left-padded tensor")
        if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor)
                                           or tuple(attention_mask.shape) != tuple(prompts.shape)):
            raise fail(f"evaluate got attention_mask {describe(attention_mask)} for prompts {describe(prompts)}",
                       f"a 0/1 tensor of the prompts' shape {list(prompts.shape)}",
                       "pass the tokenizer's attention_mask for the same left-padded ids")
        mask = torch.ones_like(prompts) if attention_mask is None else attention_mask
        if not bool(mask[:, -1].all()):
            raise fail("evaluate got prompts whose last column has padding", "left-padded prompts",
                       'pad on the left (tokenizer.padding_side = "left")')
        return prompts, mask
    if isinstance(prompts, (str, bytes)):
        raise fail(f"evaluate got prompts as one string ({prompts!r:.60})", "a list of prompt strings (or token ids)",
                   f"wrap it in a list: prompts=[{prompts!r:.40}]")
    if attention_mask is not None:
        raise fail("evaluate got prompts as strings and an attention_mask", "an attention_mask only with token ids",
                   "drop attention_mask (strings are tokenised and left-padded here)")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise fail(f"evaluate got prompts {prompts[:2]!r:.80}", "a non-empty list of non-empty strings",
                   "pass the prompts as strings (or token ids)")
    if tok is None:
        raise fail("evaluate got prompts as strings but no tokenizer", "a tokenizer", "pass tokenizer=")
    encoded = [tok(p)["input_ids"] for p in prompts]
    width = max(map(len, encoded))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros(len(encoded), width, dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = torch.tensor(tokens)
        mask[row, width - len(tokens) :] = 1
    return ids, mask


def single_tokens(
    values: Any, name: str, prompts: Any, n: int, tok: Any, vocab: int | None = None
) -> Int[torch.Tensor, " prompt"]:
    """One token id per prompt (targets, distractors): single-token strings are tokenised, ids are checked.

    Example:
        >>> import headkit as hk
        >>> from headkit.prompts import single_tokens
        >>> tok = hk.models.tiny_tokenizer()
        >>> single_tokens([" apples"], "targets", ["Tom eats"], 1, tok).tolist() == [tok(" apples", add_special_tokens=False).input_ids[0]]
        True
    """
    if isinstance(values, torch.Tensor):
        from headkit.core.inputs import check_token_ids

        check_token_ids(values, vocab, "evaluate", name, name[:-1])
        ids = values.long().flatten().cpu()
    else:
        if isinstance(values, (str, bytes)):
            raise fail(f"evaluate got {name} as one string ({values!r:.40})", f"one {name[:-1]} per prompt ({n})",
                       f"wrap it in a list: {name}=[{values!r:.30}]")
        values = list(values)
        if tok is None:
            raise fail(f"evaluate got {name} as strings but no tokenizer", "a tokenizer", "pass tokenizer=")
        ids_list = []
        for i, value in enumerate(values):
            tokens = tok(value, add_special_tokens=False)["input_ids"]
            if len(tokens) != 1:
                prompt = prompts[i] if not isinstance(prompts, torch.Tensor) and i < len(prompts) else f"#{i}"
                raise fail(
                    f"evaluate got {name[:-1]} {value!r} for prompt {i} ({prompt!r:.60}), which is {len(tokens)} tokens",
                    f"single-token {name} (metrics compare one next token)",
                    "use the first token of the answer, or a word that is one token (often with a leading space)",
                )
            ids_list.append(tokens[0])
        ids = torch.tensor(ids_list, dtype=torch.long)
        from headkit.core.inputs import check_token_ids

        check_token_ids(ids, vocab, "evaluate", name, name[:-1])  # a tokenizer larger than the model's vocabulary
    if ids.shape[0] != n:
        raise fail(f"evaluate got {ids.shape[0]} {name} for {n} prompts", f"one per prompt ({n})", f"pass {n} {name}")
    return ids
