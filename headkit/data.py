"""Built-in data that needs no download: the seed-003 copy prompts, pair sets for gate fitting, reasoning traces.

    COPY_PROMPTS          the stochastic-ablation study's copy prompts ("Tom eats apples. Tom eats" -> " apples")
    copy_pairs()          the copy prompts as (prompt, target) pairs
    ioi_pairs(n)          indirect-object identification ("... Mary gave the drink to" -> " John")
    arithmetic_pairs(n)   two-digit sums
    antonym_pairs(kind)   antonyms, in-context or by instruction (contrastive gating)
    reasoning_traces()    short multi-sentence reasoning texts (receiver heads, sentence suppression)
    counterfactual_problem()  a few-shot ordering puzzle with a labelled chain of thought (seed 000)

Tokenise them with :mod:`headkit.prompts` (``copy_task``, ``examples``).
"""

from __future__ import annotations

import random
from typing import Literal

from headkit.core.errors import fail

__all__ = ["COPY_PROMPTS", "copy_pairs", "ioi_pairs", "arithmetic_pairs", "antonym_pairs", "reasoning_traces",
           "counterfactual_problem", "COUNTERFACTUAL_MAX_NEW_TOKENS"]


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



# ------------------------------------------------------------------------------------------------- built-in pair sets
def copy_pairs() -> list[tuple[str, str]]:
    """The seed-003 copy/induction prompts as (prompt, target) pairs.

    Example:
        >>> from headkit.data import copy_pairs
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
        >>> from headkit.data import ioi_pairs
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
        >>> from headkit.data import arithmetic_pairs
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
        >>> from headkit.data import antonym_pairs
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
        >>> from headkit.data import reasoning_traces
        >>> len(reasoning_traces())
        4
    """
    return list(_TRACES)


# ------------------------------------------------------------------------------------------------- counterfactual importance
_SHOTS = (
    "Question: Mia is taller than Leo. Leo is taller than Ava. Who is the shortest?\n"
    "Solution: I need to order the three people. Mia is taller than Leo, so Leo is shorter than Mia. "
    "Leo is taller than Ava, so Ava is shorter than Leo. So Ava is shorter than both. The answer is Ava.\n\n"
    "Question: Sam has 2 apples. He gets 3 more. How many apples does he have?\n"
    "Solution: Sam starts with 2 apples. He gets 3 more, so I add 3 to 2. 2 plus 3 is 5. The answer is 5.\n\n"
)
_COT = (  # hand-written in the examples' style; labels use Thought Anchors' sentence categories
    ("I need to order the three people by height.", "plan_generation"),
    ("The question says Tom is taller than Sam.", "fact_retrieval"),
    ("So Sam is shorter than Tom.", "active_computation"),
    ("It also says Sam is taller than Bob.", "fact_retrieval"),
    ("So Bob is shorter than Sam.", "active_computation"),
    ("Wait, let me check the order again.", "uncertainty_management"),
    ("Tom is the tallest, then Sam, then Bob.", "self_checking"),
    ("So Bob is shorter than both.", "result_consolidation"),
    ("The answer is Bob.", "final_answer_emission"),
)
COUNTERFACTUAL_MAX_NEW_TOKENS = 80
"""Tokens per rollout for :func:`counterfactual_problem` (its whole chain of thought is about 70)."""


def _first_solution(text: str) -> str | None:
    """The answer of the continuation's own solution (the few-shot format may go on to a new question)."""
    from headkit.analyses.resampling import boxed_answer

    return boxed_answer(text.split("\nQuestion")[0])


def counterfactual_problem():  # -> headkit.analyses.resampling.Problem (imported lazily)
    """The built-in problem of ``headkit counterfactual``: a three-person ordering puzzle after two solved examples.

    Gemma 3 270M (the default model) answers it correctly in 60-70 % of samples from the bare question
    (temperature 0.6, top-p 0.95: 12 of 20 in one check, 7 of the 10 that stated an answer of 12 in
    docs/results/counterfactual_gemma.md), so sentences of the chain of thought can raise or lower that. The chain of thought is hand-written in the examples' style, with one label per sentence.

    Example:
        >>> from headkit.data import counterfactual_problem
        >>> p = counterfactual_problem()
        >>> len(p.sentences), p.answer, p.categories[0], p.correct(p.extract(" So Bob. The answer is Bob."))
        (9, 'Bob', 'plan_generation', True)
    """
    from headkit.analyses.resampling import Problem

    return Problem(_SHOTS + "Question: Tom is taller than Sam. Sam is taller than Bob. Who is the shortest?\nSolution:",
                   [s for s, _ in _COT], "Bob", categories=[c for _, c in _COT], extract=_first_solution)
