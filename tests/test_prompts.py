"""The one prompt type: its padded views against the tokenizer's own padding and hand-built tensors."""

from __future__ import annotations

import pytest
import torch

import headkit as hk
from headkit import gating
from headkit.data import COPY_PROMPTS
from headkit.prompts import Prompts, copy_task, tokenize

PAIRS = [("Tom eats apples . Tom eats", " apples"), ("He bought", " milk ."), ("Alice saw a movie .", " Alice")]


@pytest.fixture(scope="module")
def tok():
    return hk.models.tiny_tokenizer()


def test_the_left_view_is_the_tokenizers_own_left_padding(tok):
    p = tokenize(tok, PAIRS)
    want = tok([q for q, _ in PAIRS], padding=True, padding_side="left", return_tensors="pt")
    assert torch.equal(p.left.input_ids, want.input_ids) and torch.equal(p.left.attention_mask, want.attention_mask)
    assert p.left.targets.tolist() == [tok(t, add_special_tokens=False).input_ids[0] for _, t in PAIRS]


def test_the_right_view_is_each_prompt_then_its_target_padded_on_the_right(tok):
    p = tokenize(tok, PAIRS)
    rows = [tok(q).input_ids + tok(t, add_special_tokens=False).input_ids for q, t in PAIRS]
    width = max(map(len, rows))
    assert p.right.input_ids.tolist() == [r + [tok.pad_token_id] * (width - len(r)) for r in rows]
    assert p.right.attention_mask.tolist() == [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    for row, (q, t) in enumerate(PAIRS):
        n_prompt, n_target = len(tok(q).input_ids), len(tok(t, add_special_tokens=False).input_ids)
        marked = p.right.target_mask[row].nonzero()[:, 0].tolist()
        assert marked == list(range(n_prompt, n_prompt + n_target))


def test_rows_and_concat_equal_tokenising_the_chosen_pairs(tok):
    p = tokenize(tok, PAIRS)
    for index in ([2, 0], torch.tensor([False, True, True]), torch.tensor([1, 1])):
        keep = index.nonzero()[:, 0].tolist() if isinstance(index, torch.Tensor) and index.dtype == torch.bool else list(index)
        want = tokenize(tok, [PAIRS[i] for i in keep])
        got = p.rows(index)
        for view in ("left", "right"):
            for name in ("input_ids", "attention_mask"):
                assert torch.equal(getattr(getattr(got, view), name), getattr(getattr(want, view), name)), (index, view)
    both = tokenize(tok, PAIRS[:1]).concat(tokenize(tok, PAIRS[1:]))
    assert torch.equal(both.right.input_ids, p.right.input_ids) and torch.equal(both.left.input_ids, p.left.input_ids)
    assert both.texts == p.texts and both.targets == p.targets


def test_the_copy_task_marks_each_first_sentence(tok):
    task = copy_task(tok)
    assert len(task) == len(COPY_PROMPTS)
    for row in (0, 7, len(task) - 1):
        text = task.texts[row]
        first = tok(text.split(". ")[0] + ".").input_ids
        first = first[1:] if first[:1] == [tok.bos_token_id] else first  # BOS is not part of the sentence
        assert task.left.input_ids[row][task.left.marked[row]].tolist() == first
        assert task.left.targets[row] == tok(task.targets[row], add_special_tokens=False).input_ids[0]
    sub = task.rows([3])  # a subset keeps the marks, re-padded to its own width
    assert sub.left.input_ids[0][sub.left.marked[0]].tolist() == task.left.input_ids[3][task.left.marked[3]].tolist()


def test_prompts_alone_have_no_targets_and_gating_refuses_them(tok):
    p = tokenize(tok, ["Tom eats apples", "He eats"])
    assert p.left.targets is None and not p.right.target_mask.any()
    assert p.left.attention_mask.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    model, _ = hk.models.tiny("llama")
    with pytest.raises(hk.HeadkitError, match=r"example 0 has an empty target"):
        gating.sequence_logprob(model, p)


def test_gating_scores_the_same_from_pairs_and_from_prompts(tok):
    model, _ = hk.models.tiny("llama", dtype=torch.float64)
    from_pairs = gating.sequence_logprob(model, PAIRS, tokenizer=tok)
    assert torch.equal(gating.sequence_logprob(model, tokenize(tok, PAIRS)), from_pairs)
    ids = Prompts.from_tokens([tok(q).input_ids for q, _ in PAIRS],
                              [tok(t, add_special_tokens=False).input_ids for _, t in PAIRS], tok.pad_token_id)
    assert torch.equal(gating.sequence_logprob(model, ids), from_pairs)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Prompts(("a",), ("b", "c"), ((1,),), ((2,),)), r"1 prompt_ids, 1 target_ids, 1 texts and 2 targets"),
        (lambda: Prompts.from_tokens([[1, 2]], [[3], [4]]), r"1 prompts and 2 targets"),
        (lambda: Prompts.from_tokens([[]], [[3]]), r"prompt 0 .* has no tokens"),
        (lambda: Prompts.from_tokens([[1]], [[3]]).rows([4]), r"rows \[4\].*below 1"),
        (lambda: Prompts.from_tokens([[1]], [[3]]).rows(torch.tensor([True, False])), r"keep-mask bool\[2\]"),
        (lambda: tokenize(hk.models.tiny_tokenizer(), [3]), r"item 0: 3"),
    ],
)
def test_bad_prompts_are_named(build, match):
    with pytest.raises(hk.HeadkitError, match=match):
        build()
