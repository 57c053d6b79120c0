"""Prompt sets with known answers, and prompts with target continuations for gate fitting.

:class:`Task` holds single-token answers (left-padded; the demo and the Monte Carlo study). The copy
task is the one of the stochastic-ablation study (seed 003): each prompt repeats a sentence and stops
one word short; the answer is that word again ("Tom eats apples. Tom eats" -> " apples"), which small
models solve with induction heads.

:class:`Examples` holds prompts with target continuations of any length (right-padded, a mask on the
target tokens), built by :func:`examples` from pairs, records or a ``datasets`` object. Built-in
pair sets that need no download: :func:`copy_pairs`, :func:`ioi_pairs`, :func:`arithmetic_pairs`
and :func:`antonym_pairs` (in-context and instruction variants, for contrastive gating).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from headkit.core.errors import fail

if TYPE_CHECKING:
    from jaxtyping import Bool, Int

Pairs = Sequence[tuple[str, str]]

__all__ = [
    "COPY_PROMPTS",
    "Task",
    "copy_task",
    "Examples",
    "examples",
    "copy_pairs",
    "ioi_pairs",
    "arithmetic_pairs",
    "antonym_pairs",
]


COPY_PROMPTS: tuple[tuple[str, str], ...] = (
    ("Tom eats apples. Tom eats", " apples"),
    ("Sarah wears hats. Sarah wears", " hats"),
    ("The boy found a kite. The boy found a", " kite"),
    ("Alice saw a movie. Alice saw a", " movie"),
    ("He bought milk. He bought", " milk"),
    ("Lisa reads books. Lisa reads", " books"),
    ("A man holds a cane. A man holds a", " cane"),
    ("The child drew a house. The child drew a", " house"),
    ("John met Paul. John met", " Paul"),
    ("Mike drinks coffee. Mike drinks", " coffee"),
    ("Jane picked flowers. Jane picked", " flowers"),
    ("Tom plays chess. Tom plays", " chess"),
    ("Anna wrote a letter. Anna wrote a", " letter"),
    ("She chose a gift. She chose a", " gift"),
    ("David fixed the car. David fixed the", " car"),
    ("Mark visits Paris. Mark visits", " Paris"),
    ("They built a fence. They built a", " fence"),
    ("The cat chased the mouse. The cat chased the", " mouse"),
    ("George paints landscapes. George paints", " landscapes"),
    ("Nancy baked bread. Nancy baked", " bread"),
    ("Alice gave Bob a book. Alice gave Bob a", " book"),
    ("It started to rain in the city. It started to rain in the", " city"),
    ("John picked an apple from the tree. John picked an apple from the", " tree"),
    ("The little boy played with a toy car. The little boy played with a", " toy"),
    ("Sara baked cookies for her friends. Sara baked cookies for her", " friends"),
    ("The dog barked at the stranger. The dog barked at the", " stranger"),
    ("Tom wrote a letter to his mother. Tom wrote a letter to his", " mother"),
    ("The sun set behind the hills. The sun set behind the", " hills"),
    ("Mary wore a red dress to the party. Mary wore a red dress to the", " party"),
    ("They walked along the river bank. They walked along the", " river"),
    ("The chef cooked pasta for dinner. The chef cooked pasta for", " dinner"),
    ("He played guitar on the stage. He played guitar on the", " stage"),
    ("She planted flowers in the garden. She planted flowers in the", " garden"),
    ("The children built a sandcastle on the beach. The children built a sandcastle on the", " beach"),
    ("I bought a ticket to the concert. I bought a ticket to the", " concert"),
    ("They traveled to France last summer. They traveled to", " France"),
    ("The teacher explained the lesson clearly. The teacher explained the", " lesson"),
    ("We watched a movie last night. We watched a", " movie"),
    ("He repaired the broken chair. He repaired the broken", " chair"),
    ("The girl sang beautifully on stage. The girl sang beautifully on", " stage"),
    ("They visited the museum in the afternoon. They visited the", " museum"),
    ("The artist painted a landscape. The artist painted a", " landscape"),
    ("She bought a new phone yesterday. She bought a new", " phone"),
    ("He finished reading the novel. He finished reading the", " novel"),
    ("The bird built a nest in the tree. The bird built a nest in the", " tree"),
    ("They played chess in the park. They played chess in the", " park"),
    ("I made coffee in the morning. I made coffee in the", " morning"),
    ("The team won the championship. The team won the", " championship"),
    ("He adopted a puppy from the shelter. He adopted a puppy from the", " shelter"),
    ("She wrote a poem about love. She wrote a poem about", " love"),
    ("The train arrived at the station. The train arrived at the", " station"),
    ("They danced together all night. They danced together all", " night"),
    ("The baker prepared fresh bread. The baker prepared fresh", " bread"),
    ("He ordered a pizza for lunch. He ordered a pizza for", " lunch"),
    ("The students studied for the exam. The students studied for the", " exam"),
    ("We listened to music all evening. We listened to", " music"),
    ("She climbed the mountain easily. She climbed the", " mountain"),
    ("He washed the dirty car. He washed the dirty", " car"),
    ("They found shelter from the storm. They found shelter from the", " storm"),
)
"""The seed-003 copy prompts (its one duplicate left out): (prompt, answer)."""


@dataclass(frozen=True)
class Task:
    """A tokenized, left-padded prompt set with one target token per prompt.

    ``first_sentence`` marks each prompt's first sentence (the text being copied), BOS excluded.

    Example:
        >>> import headkit as hk
        >>> from headkit.tasks import copy_task
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
        >>> from headkit.tasks import copy_task
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
        >>> from headkit.tasks import examples
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
            >>> from headkit.tasks import Examples
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
            >>> from headkit.tasks import Examples
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
        >>> from headkit.tasks import examples
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


# ------------------------------------------------------------------------------------------------- built-in pair sets
def copy_pairs() -> list[tuple[str, str]]:
    """The seed-003 copy/induction prompts as (prompt, target) pairs.

    Example:
        >>> from headkit.tasks import copy_pairs
        >>> copy_pairs()[0]
        ('Tom eats apples. Tom eats', ' apples')
    """
    return list(COPY_PROMPTS)


_NAMES = ("Mary", "John", "Alice", "Bob", "Sarah", "Tom", "Anna", "David", "Lisa", "Mark", "Emma", "James")
_PLACES = ("store", "park", "school", "office", "beach", "market", "station", "garden")
_OBJECTS = ("drink", "book", "ball", "gift", "letter", "key", "flower", "ticket")
_IOI_TEMPLATES = (
    "When {a} and {b} went to the {place}, {b} gave a {obj} to",
    "After {a} and {b} arrived at the {place}, {b} handed a {obj} to",
    "While {a} and {b} were at the {place}, {b} passed a {obj} to",
)


def ioi_pairs(n: int = 64, seed: int = 0) -> list[tuple[str, str]]:
    """An IOI-style name task: two people, the second gives something, the answer is the first (indirect object).

    Example:
        >>> from headkit.tasks import ioi_pairs
        >>> ioi_pairs(1, seed=0)
        [('When Anna and James went to the beach, James gave a ticket to', ' Anna')]
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(_NAMES, 2)
        text = rng.choice(_IOI_TEMPLATES).format(a=a, b=b, place=rng.choice(_PLACES), obj=rng.choice(_OBJECTS))
        out.append((text, f" {a}"))
    return out


def arithmetic_pairs(n: int = 64, seed: int = 0) -> list[tuple[str, str]]:
    """Small arithmetic with a short chain of thought as the target: "a + b * c" worked out in two steps.

    Example:
        >>> from headkit.tasks import arithmetic_pairs
        >>> arithmetic_pairs(1, seed=0)
        [('Q: What is 7 + 7 * 1? A:', ' First 7 * 1 = 7. Then 7 + 7 = 14. The answer is 14.')]
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        out.append(
            (f"Q: What is {a} + {b} * {c}? A:", f" First {b} * {c} = {b * c}. Then {a} + {b * c} = {a + b * c}. "
             f"The answer is {a + b * c}.")
        )
    return out


_ANTONYMS = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"), ("old", "new"),
    ("light", "dark"), ("open", "closed"), ("early", "late"), ("high", "low"), ("rich", "poor"), ("hard", "soft"),
    ("strong", "weak"), ("long", "short"), ("full", "empty"), ("wet", "dry"), ("clean", "dirty"), ("loud", "quiet"),
    ("thick", "thin"), ("heavy", "light"), ("true", "false"), ("win", "lose"), ("good", "bad"), ("left", "right"),
    ("in", "out"), ("day", "night"), ("love", "hate"), ("buy", "sell"), ("push", "pull"), ("start", "end"),
    ("above", "below"), ("inside", "outside"),
)


def antonym_pairs(
    variant: Literal["icl", "instruction"], n: int = 32, shots: int = 5, seed: int = 0
) -> list[tuple[str, str]]:
    """An antonym task in two formats that differ only in how the task is given (contrastive gating).

    ``icl`` shows ``shots`` word pairs and asks for the next; ``instruction`` states the task and shows one
    pair. Row i asks for the same word in both variants, so the two lists are matched pairs.

    Example:
        >>> from headkit.tasks import antonym_pairs
        >>> antonym_pairs("instruction", n=1)[0]
        ('Give the opposite of each word.\\npush: pull\\nhot:', ' cold')
    """
    if variant not in ("icl", "instruction"):
        raise fail(f"antonym_pairs got variant {variant!r}", '"icl" or "instruction"', 'pass variant="icl"')
    rng = random.Random(seed)
    out = []
    for i in range(n):
        query = _ANTONYMS[i % len(_ANTONYMS)]
        others = [p for p in _ANTONYMS if p != query]
        demos = rng.sample(others, shots)
        if variant == "icl":
            head = "".join(f"{a}: {b}\n" for a, b in demos)
        else:
            head = "Give the opposite of each word.\n" + f"{demos[0][0]}: {demos[0][1]}\n"
        out.append((f"{head}{query[0]}:", f" {query[1]}"))
    return out


# ------------------------------------------------------------------------------------------------- reasoning traces
_TRACES = (
    "A shop sells pencils at 3 dollars each and pens at 5 dollars each. Maya buys 4 pencils and 2 pens. "
    "First, I need the cost of the pencils. 4 pencils at 3 dollars is 12 dollars. Next, the pens. "
    "2 pens at 5 dollars is 10 dollars. Now I add the two amounts. 12 plus 10 is 22. Wait, let me check "
    "the pencil price again. Yes, it is 3 dollars each, so 12 is right. So Maya pays 22 dollars in total. "
    "The answer is 22.",
    "A train leaves at 9:40 and the trip takes 2 hours and 35 minutes. When does it arrive? Let me add the "
    "hours first. 9:40 plus 2 hours is 11:40. Then I add the 35 minutes. 11:40 plus 20 minutes is 12:00. "
    "That leaves 15 more minutes. 12:00 plus 15 minutes is 12:15. Hmm, let me double check by adding "
    "minutes first. 40 plus 35 is 75 minutes, which is 1 hour and 15 minutes. So 9 plus 2 plus 1 is 12, "
    "and the time is 12:15. The train arrives at 12:15.",
    "What is the sum of all even numbers from 2 to 20? The even numbers are 2, 4, 6, 8, 10, 12, 14, 16, "
    "18 and 20. There are 10 of them. I can pair the first and the last. 2 plus 20 is 22. 4 plus 18 is also "
    "22. So every pair sums to 22. There are 5 pairs. 5 times 22 is 110. Let me verify with the formula. "
    "The sum is n times n plus 1 with n equal to 10. That is 10 times 11, which is 110. The answer is 110.",
    "A rectangle has a perimeter of 30 cm and its length is twice its width. Find its area. Let the width "
    "be w. Then the length is 2w. The perimeter is 2 times the sum of length and width. So 2 times 3w is 30. "
    "That means 6w is 30, so w is 5. The length is then 10. Wait, I should check the perimeter. 2 times 15 "
    "is 30, which matches. The area is length times width. 10 times 5 is 50. The area is 50 square cm.",
)


def reasoning_traces() -> list[str]:
    """Four short step-by-step solutions (hand-written for examples and tests; not model outputs).

    Each has 12 or more sentences, with plans, checks and a final answer, so that receiver-head and
    sentence-suppression analyses have something to find on the default model.

    Example:
        >>> from headkit.tasks import reasoning_traces
        >>> len(reasoning_traces())
        4
    """
    return list(_TRACES)
