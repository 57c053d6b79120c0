"""Every adapter's ``applied`` restores exactly what it changed, whatever order blocks are exited in
(manual enter/exit, interleaved generators, nesting, exceptions), and while some blocks are still open
the model does exactly what those blocks ask, no more."""

from __future__ import annotations

import itertools

import pytest
import torch

import headkit as hk
from tests.conftest import attachments, max_diff, shared_runner, token_ids

KINDS = ["hf-eager", "hf-sdpa", "tl", "tl-compat", "tl-hooked", "nnsight-eager"]
BLOCKS = {  # attention edits on the same layer and z edits, so blocks share modules
    "mask": lambda: hk.mask_attention("L1H0 L1H3", keys=[(1, 4)]),
    "ablate": lambda: hk.zero_ablate("L1H2 L0H1"),
    "capture": lambda: hk.capture_attention("L1H0"),
}


def forward(runner, ids):
    with torch.no_grad():
        if runner.adapter.startswith("nnsight"):
            return runner.model._module(ids).logits
        if runner.adapter.startswith("tl"):
            return runner.model(ids)
        return runner.model(ids).logits


@pytest.fixture(params=KINDS)
def runner(request):
    runner = shared_runner(request.param, "llama")
    runner.logits(token_ids())  # TransformerLens adds hooks of its own on the first pass
    return runner


@pytest.mark.parametrize("order", list(itertools.permutations(BLOCKS)), ids="-".join)
def test_blocks_exited_in_any_order_leave_exactly_the_open_ones(runner, order):
    ids = token_ids()
    before, clean = attachments(runner.model), forward(runner, ids)
    reference = shared_runner(runner.adapter, "llama", tag="reference")  # same weights, never touched by the blocks
    ivs = {name: make() for name, make in BLOCKS.items()}
    blocks = {name: runner.applied(iv) for name, iv in ivs.items()}
    for name in BLOCKS:  # entered in one order
        blocks[name].__enter__()
    open_ = list(BLOCKS)
    for name in order:  # left in another
        blocks[name].__exit__(None, None, None)
        open_.remove(name)
        want = reference.backend.logits(ids, *[BLOCKS[n]() for n in open_])  # what only the open blocks do
        assert max_diff(forward(runner, ids), want) <= 1e-5, (order, open_)
    assert attachments(runner.model) == before
    assert torch.equal(forward(runner, ids), clean)


def test_interleaved_generators_and_an_exception_inside(runner):
    ids = token_ids()
    before, clean = attachments(runner.model), forward(runner, ids)

    def session(iv):
        with runner.applied(iv):
            yield forward(runner, ids)
            yield forward(runner, ids)

    a, b = session(BLOCKS["mask"]()), session(BLOCKS["ablate"]())
    next(a), next(b)  # a entered, then b
    next(a, None), next(a, None)  # a finishes first
    both_done = list(b)
    assert both_done and attachments(runner.model) == before and torch.equal(forward(runner, ids), clean)
    with pytest.raises(RuntimeError, match="inside"):
        with runner.applied(BLOCKS["mask"]()):
            with runner.applied(BLOCKS["ablate"]()):
                raise RuntimeError("inside")
    assert attachments(runner.model) == before and torch.equal(forward(runner, ids), clean)
