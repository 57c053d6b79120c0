"""Prompt sets with known answers. The copy task is the one of the stochastic-ablation study (seed 003).

Each prompt repeats a sentence and stops one word short; the answer is that word again ("Tom eats
apples. Tom eats" -> " apples"), which small models solve with induction heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from headkit.errors import StaysLocal, fail

if TYPE_CHECKING:
    from jaxtyping import Bool, Int

__all__ = ["COPY_PROMPTS", "Task", "copy_task"]

_stays_local = StaysLocal(__name__)  # pickling this module for a remote trace fails with the fix

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
    targets: Int[torch.Tensor, "n"]
    first_sentence: Bool[torch.Tensor, "n pos"]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, keep: Bool[torch.Tensor, "n"]) -> Task:
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
