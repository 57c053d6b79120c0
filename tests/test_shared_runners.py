"""The shared runners' check (tests/conftest.py): whatever a test leaves on a shared model is reported."""

from __future__ import annotations

import pytest
import torch

import headkit as hk
from tests import reference as ref
from tests.conftest import Runner, _Snapshot, left_behind, shared_runner, token_ids


def _weights(r):
    with torch.no_grad():
        ref.head_slice(r.plain, 1, 2).mul_(0.5)


def _frozen(r):
    r.plain.lm_head.weight.requires_grad_(False)


def _grad(r):
    r.plain(token_ids()).logits.sum().backward()


def _training(r):
    r.plain.train()


def _hook(r):
    ref.out_proj(r.plain, 0).register_forward_pre_hook(lambda module, args: None)


def _attention(r):
    r.plain.set_attn_implementation("sdpa" if r.plain.config._attn_implementation == "eager" else "eager")


def _open_block(r):
    r.left_open = r.applied(hk.mask_attention("L1H0", keys=[(0, 2)]), hk.zero_ablate("L0H1"))  # (kept: an
    r.left_open.__enter__()  # unreferenced block would be closed by the garbage collector)


def _bias(r):
    proj = ref.out_proj(r.plain, 0)
    r.plain.model.layers[0].self_attn.o_proj = torch.nn.Linear(proj.in_features, proj.out_features, bias=True)


LEFTOVERS = {
    "weights": (_weights, "values changed"),
    "requires_grad": (_frozen, "requires_grad changed"),
    "grad": (_grad, ".grad left"),
    "training": (_training, "train/eval mode changed"),
    "hook": (_hook, "hooks added"),
    "attention": (_attention, "configuration changed"),
    "open block": (_open_block, "hooks added|config was replaced|attention routing"),
    "new module": (_bias, "parameters/buffers added"),
}


@pytest.mark.parametrize("leftover", LEFTOVERS)
@pytest.mark.parametrize("kind", ["hf-sdpa", "tl", "nnsight-eager"])
def test_each_kind_of_leftover_is_reported(kind, leftover):
    import re

    runner = Runner(kind, "llama")  # its own: it is changed below
    runner.logits(token_ids())
    snapshot = _Snapshot(runner)
    assert snapshot.problems() == []
    undone = [hk.zero_ablate("L0H1"), hk.gate(torch.ones(2, 4)), hk.mask_attention("L1H0", keys=[(0, 2)])]
    runner.logits(token_ids(), *undone)
    assert snapshot.problems() == [], "an undone intervention counted as a leftover"
    change, pattern = LEFTOVERS[leftover]
    change(runner)
    found = snapshot.problems()
    assert any(re.search(pattern, p) for p in found), found


def test_a_leftover_on_a_shared_runner_fails_the_test_and_the_runner_is_rebuilt():
    runner = shared_runner("hf-sdpa", "llama", tag="left behind")
    handle = ref.out_proj(runner.plain, 1).register_forward_hook(lambda module, args, out: None)
    problems = left_behind()  # what the teardown check finds (it fails the test with these lines)
    handle.remove()
    assert len(problems) == 1 and "Runner(hf-sdpa, llama): plain: hooks added" in problems[0], problems
    assert shared_runner("hf-sdpa", "llama", tag="left behind") is not runner  # the next test gets a fresh one


def test_a_clean_test_keeps_its_shared_runner():
    runner = shared_runner("tl", "llama", tag="kept")
    runner.logits(token_ids(), hk.mask_attention("L1H0", keys=[(0, 3)]))
    assert left_behind() == []
    assert shared_runner("tl", "llama", tag="kept") is runner


def test_reference_blocks_left_set_are_reported():
    ref.BLOCKED[0] = ref.Block([1], {2})
    problems = left_behind()
    assert problems == ["tests/reference.py: BLOCKED left set: [0]"] and not ref.BLOCKED
