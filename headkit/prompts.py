"""One prompt type: tokenised prompts, each with an optional target continuation, padded on demand.

:class:`Prompts` keeps each prompt's and each target's tokens unpadded and gives two views:
``.left`` (left-padded prompts, the next-token target of each: the Monte Carlo study, the demo, induction
scores) and ``.right`` (prompt then target, right-padded, a mask on the target tokens: gate fitting and
sequence log-probabilities). Build one with :func:`tokenize` (pairs, records, columns, a
``datasets.Dataset``, or prompts alone), :func:`copy_task` (seed 003's copy task, its first sentences
marked) or :meth:`Prompts.from_tokens`; the built-in pair sets are in :mod:`headkit.data`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.adapter import pad_id
from headkit.core.errors import describe, fail
from headkit.data import COPY_PROMPTS

if TYPE_CHECKING:
    from jaxtyping import Bool, Int

Pairs = Sequence[tuple[str, str]]

__all__ = ["Prompts", "LeftPadded", "RightPadded", "tokenize", "copy_task", "left_padded", "single_tokens"]


@dataclass(frozen=True)
class LeftPadded:
    """Prompts left-padded (every row ends in its last prompt token), as next-token readouts want them.

    ``targets`` is each prompt's next-token target (its target's first token; None when a prompt has no
    target); ``marked`` is True on each prompt's marked span (e.g. the copy task's first sentence).

    Example:
        >>> from headkit.prompts import Prompts
        >>> view = Prompts.from_tokens([[1, 5], [1, 6, 7]], [[8, 9], [4]]).left
        >>> view.attention_mask.tolist(), view.targets.tolist()
        ([[0, 1, 1], [1, 1, 1]], [8, 4])
    """

    input_ids: Int[torch.Tensor, "n pos"]
    attention_mask: Int[torch.Tensor, "n pos"]
    targets: Int[torch.Tensor, " n"] | None
    marked: Bool[torch.Tensor, "n pos"]


@dataclass(frozen=True)
class RightPadded:
    """Each prompt followed by its target, right-padded; ``target_mask`` is True on the target tokens.

    The logits that predict the targets sit one position earlier: :meth:`scored` gives those positions and
    the tokens they must predict. Padding is never a target.

    Example:
        >>> from headkit.prompts import Prompts
        >>> view = Prompts.from_tokens([[1, 5], [1, 6, 7]], [[8, 9], [4]]).right
        >>> view.attention_mask.tolist(), view.target_mask.int().tolist()
        ([[1, 1, 1, 1], [1, 1, 1, 1]], [[0, 0, 1, 1], [0, 0, 0, 1]])
    """

    input_ids: Int[torch.Tensor, "n pos"]
    attention_mask: Int[torch.Tensor, "n pos"]
    target_mask: Bool[torch.Tensor, "n pos"]
    marked: Bool[torch.Tensor, "n pos"]

    def scored(self) -> tuple[Bool[torch.Tensor, "n pos"], Int[torch.Tensor, " m"]]:
        """Where the logits predict a target token (``[n, pos]``), and those tokens (row-major order).

        Example:
            >>> from headkit.prompts import Prompts
            >>> where, tokens = Prompts.from_tokens([[1, 5]], [[6, 7]]).right.scored()
            >>> where.int().tolist(), tokens.tolist()
            ([[0, 1, 1, 0]], [6, 7])
        """
        positions = torch.zeros_like(self.target_mask)
        positions[:, :-1] = self.target_mask[:, 1:]
        return positions, self.input_ids[:, 1:][self.target_mask[:, 1:]]


@dataclass(frozen=True)
class Prompts:
    """Tokenised prompts with optional target continuations; ``.left`` and ``.right`` are the padded views.

    ``prompt_ids`` and ``target_ids`` hold each row's tokens unpadded (a target may be empty: prompts
    alone); ``marked`` optionally gives a ``[start, end)`` span of each prompt's tokens (the copy task's
    first sentence, BOS excluded). Views are built once, on first use.

    Example:
        >>> from headkit.prompts import Prompts
        >>> p = Prompts.from_tokens([[1, 5], [1, 6, 7]], [[8, 9], [4]])
        >>> p.left.input_ids.tolist(), p.left.targets.tolist()
        ([[0, 1, 5], [1, 6, 7]], [8, 4])
        >>> p.right.input_ids.tolist(), p.right.target_mask.int().tolist()
        ([[1, 5, 8, 9], [1, 6, 7, 4]], [[0, 0, 1, 1], [0, 0, 0, 1]])
    """

    texts: tuple[str, ...]
    targets: tuple[str, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    target_ids: tuple[tuple[int, ...], ...]
    pad_id: int = 0
    marked_spans: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.prompt_ids)
        sizes = {len(self.texts), len(self.targets), len(self.target_ids)}
        if self.marked_spans is not None:
            sizes.add(len(self.marked_spans))
        if n == 0 or sizes != {n}:
            raise fail(
                f"Prompts got {n} prompt_ids, {len(self.target_ids)} target_ids, {len(self.texts)} texts and "
                f"{len(self.targets)} targets",
                "the same number of each, at least one prompt",
                "build it with prompts.tokenize(tokenizer, pairs) or Prompts.from_tokens(prompt_ids, target_ids)",
            )
        for i, p in enumerate(self.prompt_ids):
            if len(p) == 0:
                raise fail(
                    f"prompt {i} ({self.texts[i]!r:.60}) has no tokens",
                    "at least one token per prompt",
                    f"drop prompt {i} or give it text",
                )

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @staticmethod
    def from_tokens(
        prompt_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]] | None = None,
        pad_id: int = 0,
        texts: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
    ) -> Prompts:
        """Prompts from token ids (``target_ids`` None: no targets); texts default to the ids written out.

        Example:
            >>> from headkit.prompts import Prompts
            >>> Prompts.from_tokens([[1, 5], [1, 6, 7]], [[8, 9], [4]]).right.target_mask.int().tolist()
            [[0, 0, 1, 1], [0, 0, 0, 1]]
        """
        if target_ids is None:
            target_ids = [() for _ in prompt_ids]
        if len(prompt_ids) != len(target_ids):
            raise fail(
                f"Prompts got {len(prompt_ids)} prompts and {len(target_ids)} targets",
                "one target per prompt",
                "pass matching lists",
            )

        def written(given: Sequence[str] | None, tokens: Sequence[Sequence[int]]) -> tuple[str, ...]:
            return tuple(given) if given is not None else tuple(" ".join(map(str, t)) for t in tokens)

        return Prompts(
            written(texts, prompt_ids), written(targets, target_ids),
            tuple(tuple(int(t) for t in p) for p in prompt_ids), tuple(tuple(int(t) for t in t_) for t_ in target_ids),
            int(pad_id),
        )

    def rows(self, index: Sequence[int] | Bool[torch.Tensor, " n"] | Int[torch.Tensor, " k"]) -> Prompts:
        """The prompts at ``index`` (a list or tensor of rows, repeats allowed, or a boolean keep-mask).

        Example:
            >>> from headkit.prompts import Prompts
            >>> p = Prompts.from_tokens([[1, 5], [1, 6, 7]], [[8], [4]])
            >>> p.rows(torch.tensor([False, True])).right.input_ids.tolist()   # views fit the rows kept
            [[1, 6, 7, 4]]
        """
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise fail(f"Prompts.rows got a keep-mask {describe(index)}", f"one bool per prompt ({len(self)})",
                           "pass a mask of the prompts' length, or row numbers")
            index = index.nonzero()[:, 0]
        picked = index.long().flatten().tolist()
        if any(not -len(self) <= i < len(self) for i in picked):
            raise fail(f"Prompts.rows got rows {picked[:8]}", f"row numbers below {len(self)}", "pass existing rows")

        def take(values: tuple) -> tuple:
            return tuple(values[i] for i in picked)

        marked = None if self.marked_spans is None else take(self.marked_spans)
        return Prompts(take(self.texts), take(self.targets), take(self.prompt_ids), take(self.target_ids),
                       self.pad_id, marked)

    def concat(self, other: Prompts) -> Prompts:
        """These prompts, then ``other``'s (marked spans kept only when both have them).

        Example:
            >>> from headkit.prompts import Prompts
            >>> a, b = Prompts.from_tokens([[1, 5]], [[6]]), Prompts.from_tokens([[1]], [[7, 8, 9]])
            >>> a.concat(b).right.input_ids.tolist()
            [[1, 5, 6, 0], [1, 7, 8, 9]]
        """
        marked = None
        if self.marked_spans is not None and other.marked_spans is not None:
            marked = self.marked_spans + other.marked_spans
        return Prompts(self.texts + other.texts, self.targets + other.targets, self.prompt_ids + other.prompt_ids,
                       self.target_ids + other.target_ids, self.pad_id, marked)

    @cached_property
    def left(self) -> LeftPadded:
        """The prompts left-padded, with each one's next-token target (see :class:`LeftPadded`)."""
        n, width = len(self), max(map(len, self.prompt_ids))
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        marked = torch.zeros(n, width, dtype=torch.bool)
        for row, tokens in enumerate(self.prompt_ids):
            start = width - len(tokens)
            ids[row, start:] = torch.tensor(tokens)
            mask[row, start:] = 1
            if self.marked_spans is not None:
                a, b = self.marked_spans[row]
                marked[row, start + a : start + b] = True
        targets = None
        if all(self.target_ids):
            targets = torch.tensor([t[0] for t in self.target_ids], dtype=torch.long)
        return LeftPadded(ids, mask, targets, marked)

    @cached_property
    def right(self) -> RightPadded:
        """Each prompt then its target, right-padded, with the target tokens marked (see :class:`RightPadded`)."""
        n = len(self)
        width = max(len(p) + len(t) for p, t in zip(self.prompt_ids, self.target_ids))
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        target = torch.zeros(n, width, dtype=torch.bool)
        marked = torch.zeros(n, width, dtype=torch.bool)
        for row, (p, t) in enumerate(zip(self.prompt_ids, self.target_ids)):
            ids[row, : len(p) + len(t)] = torch.tensor([*p, *t])
            mask[row, : len(p) + len(t)] = 1
            target[row, len(p) : len(p) + len(t)] = True
            if self.marked_spans is not None:
                a, b = self.marked_spans[row]
                marked[row, a:b] = True
        return RightPadded(ids, mask, target, marked)

    def require_targets(self, owner: str) -> Prompts:
        """These prompts, or a HeadkitError naming the first prompt whose target has no tokens.

        Example:
            >>> from headkit.prompts import Prompts
            >>> try:
            ...     Prompts.from_tokens([[1, 5]], [[]]).require_targets("fit")
            ... except ValueError as error:
            ...     print(str(error).split(";")[0])
            fit: example 0 has an empty target after tokenisation ('')
        """
        for i, t in enumerate(self.target_ids):
            if len(t) == 0:
                raise fail(
                    f"{owner}: example {i} has an empty target after tokenisation ({self.targets[i]!r})",
                    "at least one target token per example (a target that tokenises to nothing cannot be scored)",
                    f"drop example {i} or give it a non-empty target",
                )
        return self


def tokenize(tokenizer: Any, data: Any, *, prompt: str = "prompt", target: str = "target") -> Prompts:
    """Tokenise prompts with targets: (prompt, target) pairs, records, columns, a ``datasets.Dataset``, or prompts alone.

    The prompt is tokenised as usual (BOS included if the tokenizer adds one) and the target on its own
    without special tokens: the boundary is exact, as with the reference CHG code's marker token. Start
    targets with the space they need (" Paris"). A list of strings gives prompts without targets.
    Padding uses the tokenizer's pad token, else its (first) EOS token, else 0: the policy generation uses
    (:func:`headkit.core.adapter.pad_id`).

    Example:
        >>> import headkit as hk
        >>> from headkit.prompts import tokenize
        >>> tok = hk.models.tiny_tokenizer()
        >>> p = tokenize(tok, [("Tom eats", " apples"), ("He bought milk .", " Tom eats")])
        >>> p.right.input_ids.shape, p.right.target_mask.sum(-1).tolist()
        (torch.Size([2, 7]), [1, 2])
        >>> len(tokenize(tok, {"q": ["Tom eats", "He bought"], "a": [" apples", " milk"]}, prompt="q", target="a"))
        2
        >>> tokenize(tok, ["Tom eats apples", "He eats"]).left.attention_mask.tolist()
        [[1, 1, 1, 1], [0, 1, 1, 1]]
    """
    if isinstance(data, Prompts):
        return data
    pairs = _pairs(data, prompt, target)
    prompt_ids = [tokenizer(p)["input_ids"] for p, _ in pairs]
    target_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] if t else [] for _, t in pairs]
    return Prompts.from_tokens(prompt_ids, target_ids, pad_id(tokenizer), [p for p, _ in pairs], [t for _, t in pairs])


def copy_task(tokenizer: Any, prompts: tuple[tuple[str, str], ...] = COPY_PROMPTS) -> Prompts:
    """Tokenise the copy task of seed 003, each prompt's first sentence (the text being copied) marked.

    A multi-token answer's next-token target is its first token (``.left.targets``).

    Example:
        >>> import headkit as hk
        >>> from headkit.prompts import copy_task
        >>> task = copy_task(hk.models.tiny_tokenizer())
        >>> len(task), task.texts[0], task.targets[0], task.left.marked[0].sum().item()
        (59, 'Tom eats apples. Tom eats', ' apples', 4)
    """
    if not prompts:
        raise fail("copy_task got no prompts", "(prompt, answer) pairs", "pass COPY_PROMPTS or your own pairs")
    base = tokenize(tokenizer, list(prompts))
    bos = 1 if tokenizer.bos_token_id is not None and base.prompt_ids[0][:1] == (tokenizer.bos_token_id,) else 0
    firsts = [len(tokenizer(t.split(". ")[0] + ".")["input_ids"]) for t in base.texts]
    return Prompts(base.texts, base.targets, base.prompt_ids, base.target_ids, base.pad_id,
                   tuple((bos, n) for n in firsts))


def _pairs(data: Any, prompt: str, target: str) -> list[tuple[str, str]]:
    columns = getattr(data, "column_names", None)  # a datasets.Dataset
    if isinstance(data, Mapping) or columns is not None:
        names = list(columns) if columns is not None else list(data)
        if prompt not in names or target not in names:
            raise fail(
                f"tokenize got columns {names}",
                f"a {prompt!r} column and a {target!r} column",
                "name them with tokenize(tok, data, prompt=..., target=...)",
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
                        "name them with tokenize(tok, data, prompt=..., target=...)",
                    )
                pairs.append((item[prompt], item[target]))
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                pairs.append((item[0], item[1]))
            elif isinstance(item, str):  # a prompt without a target
                pairs.append((item, ""))
            else:
                raise fail(f"tokenize got item {i}: {item!r:.60}", "(prompt, target) pairs, records or prompt strings",
                           "pass pairs")
    else:
        raise fail(
            f"tokenize got a {type(data).__name__}",
            "(prompt, target) pairs, records with prompt/target keys, a mapping of columns, or a datasets.Dataset",
            "e.g. tokenize(tok, [(\"The capital of France is\", \" Paris\")])",
        )
    if not pairs:
        raise fail("tokenize got no examples", "at least one (prompt, target) pair", "pass a non-empty set")
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
    view = tokenize(tok, prompts).left
    ids, mask = view.input_ids, view.attention_mask
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
