"""TransformerLens 2.x/3.x ``HookedTransformer`` as a first-class model, and what every TransformerLens version
shares: plain hooks, cleanup, value-bias folding, dead rows, and upstream generation bugs shown without headkit.

CI runs this file in virtualenvs with TransformerLens 2.16.1 and 3.9.0 (``HEADKIT_TEST_ADAPTERS=tl-hooked``);
with TransformerLens 4 (no HookedTransformer) the HookedTransformer tests skip and the bridge ones run.
Exactness of every intervention on a HookedTransformer is the tl-hooked column of test_exactness.py.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import warnings

import pytest
import torch

import headkit as hk
from headkit import gating, montecarlo, receivers, stochastic_ablation, suppression
from headkit.adapters import transformer_lens as hk_tl
from headkit.prompts import Prompts
from tests.conftest import Runner, attachments, max_diff, shared_runner, token_ids
from tests.hooked import hooked_from, hooked_transformer_available

needs_hooked = pytest.mark.skipif(not hooked_transformer_available(), reason="no HookedTransformer (TransformerLens 4)")
PROMPTS = ["Tom eats apples . Tom eats", "the cat saw a dog . the cat saw a", "Sarah wears hats . Sarah"]
TEXT = "the cat eats apples . Tom reads books . the dog saw a bird . Sarah wears hats . the man drinks milk ."


@pytest.fixture(params=["gpt2", "llama", "qwen2"])
def pair(request):
    """A HookedTransformer runner and a transformers runner on the same weights."""
    return shared_runner("tl-hooked", request.param), shared_runner("hf-eager", request.param)


@pytest.fixture(params=[(kind, arch) for kind in ("tl", "tl-hooked") for arch in ("gpt2", "llama", "qwen2")],
                ids=lambda p: "-".join(p))
def tl_pair(request):
    """A TransformerLens runner (bridge or HookedTransformer, as this virtualenv has) and a transformers one."""
    kind, arch = request.param
    return shared_runner(kind, arch), shared_runner("hf-eager", arch)


def own_targets(runner, prompts):
    """Each prompt's greedy next token under the full model (random weights never say the 'right' word)."""
    ids = [torch.tensor([runner.tokenizer(p)["input_ids"]]) for p in prompts]
    with torch.no_grad():
        return torch.stack([runner.plain(i).logits[0, -1].argmax() for i in ids])


# ------------------------------------------------------------------------------------------------- models
@needs_hooked
def test_hooked_transformer_is_recognised_everywhere(pair):
    hooked, plain = pair
    assert hk_tl.is_hooked_transformer(hooked.model) and not hk_tl.is_bridge(hooked.model)
    assert isinstance(hooked.backend, hk_tl.TLBackend) and hooked.backend.shape == plain.backend.shape
    ids = token_ids()
    assert max_diff(hooked.model(ids), plain.plain(ids).logits) <= 1e-5  # the conversion is faithful
    ablate = hk.zero_ablate("L0H1 L1H3")
    via_hooks = hooked.model.run_with_hooks(ids, fwd_hooks=hk_tl.fwd_hooks(hooked.model, ablate))
    with hk_tl.applied(hooked.model, ablate):
        inside = hooked.model(ids)
    assert torch.equal(via_hooks, inside)
    assert max_diff(inside, plain.logits(ids, ablate)) <= 1e-5
    assert max_diff(inside, plain.plain(ids).logits) > 1e-3


def test_importing_transformer_lens_never_breaks_other_models():
    """Any TransformerLens version imported first: transformers models still get their own backend."""
    code = (
        "import transformer_lens, headkit as hk\n"
        "model, tok = hk.models.tiny('llama')\n"
        "backend = hk.get_backend(model, tok)\n"
        "assert type(backend).__name__ == 'HFBackend', backend\n"
        "import torch; backend.logits(torch.tensor([[1, 5, 6]]), hk.zero_ablate('L0H1'))\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_non_transformer_lens_models_are_pointed_to_the_right_adapter():
    model, _ = hk.models.tiny("llama")
    with pytest.raises(hk.HeadkitError, match=r"got a LlamaForCausalLM.*TransformerBridge.*HookedTransformer.*huggingface"):
        hk_tl.fwd_hooks(model, hk.zero_ablate("L0H0"))


# ------------------------------------------------------------------------------------------------- cleanup
@pytest.mark.parametrize("kind", ["tl", "tl-compat", "tl-hooked"])
def test_applied_removes_exactly_what_it_attached_after_errors(kind):
    runner = Runner(kind, "llama")  # its own: the user's hook below stays until reset_hooks()
    model, ids = runner.model, token_ids()
    def own(pattern, hook):  # the user's own hook stays
        return pattern

    model.add_hook("blocks.0.attn.hook_pattern", own)
    clean = runner.backend.logits(ids)  # (a 3.9 bridge adds hooks of its own on the first forward pass)
    before = attachments(model)
    with pytest.raises(hk.HeadkitError, match="L7H0"):  # validation error: nothing attached
        with hk_tl.applied(model, hk.zero_ablate("L0H1"), hk.zero_ablate("L7H0")):
            pass
    assert attachments(model) == before
    with pytest.raises(RuntimeError, match="inside"):  # an exception inside the block
        with hk_tl.applied(model, hk.zero_ablate("L1H2"), hk.mask_attention("L1H0", keys=[(0, 3)])):
            assert attachments(model) != before
            raise RuntimeError("inside")
    assert attachments(model) == before
    with pytest.raises(hk.HeadkitError, match="per-row"):  # a run-time error in the forward pass
        runner.backend.logits(ids, hk.gate(torch.ones(5, 2, 4)))
    assert attachments(model) == before
    assert torch.equal(runner.backend.logits(ids), clean)  # nothing left acting on the model
    model.reset_hooks()


# ------------------------------------------------------------------------------------------------- value biases
@needs_hooked
def test_folded_value_biases_are_warned_once_per_model_on_every_path():
    """from_pretrained's default processing folds b_V into b_O: ablating hook_z then keeps W_O b_V (GPT-2)."""
    hf, tok = hk.models.tiny("gpt2", attn_implementation="eager")
    folded = hooked_from(hf, "gpt2", fold_value_biases=True)
    exact = hooked_from(hf, "gpt2")
    ids = token_ids()
    assert max_diff(folded(ids), exact(ids)) <= 1e-5  # the same model...
    assert hk_tl.value_biases_folded(folded) and not hk_tl.value_biases_folded(exact)
    with pytest.warns(UserWarning, match=r"value biases look folded.*from_pretrained_no_processing"):
        got = hk.get_backend(folded, tok).logits(ids, hk.zero_ablate("L1H1"))
    want = hk.get_backend(exact, tok).logits(ids, hk.zero_ablate("L1H1"))
    assert max_diff(got, want) > 1e-3  # ...but ablation differs: the warning is about a real difference
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per model, whatever the path (gates, Monte Carlo)
        hk.get_backend(folded, tok).logits(ids, hk.gate(torch.full((2, 4), 0.5)))
        montecarlo.evaluate(folded, PROMPTS, [" apples"] * 3, montecarlo.bernoulli(2, 0.5, 2, 4), tokenizer=tok,
                            progress=False)
        hk.get_backend(exact, tok).logits(ids, hk.zero_ablate("L1H1"))  # never for unfolded weights
    fresh = hooked_from(hf, "gpt2", fold_value_biases=True)
    with pytest.warns(UserWarning, match="value biases look folded"):  # a gate alone warns too
        montecarlo.evaluate(fresh, PROMPTS, [" apples"] * 3, montecarlo.bernoulli(2, 0.5, 2, 4), tokenizer=tok,
                            progress=False)


@needs_hooked
def test_models_without_value_biases_are_not_warned_about():
    llama, tok = hk.models.tiny("llama", attn_implementation="eager")
    model = hooked_from(llama, "llama", fold_value_biases=True)  # Llama has no biases: folding changes nothing
    assert not hk_tl.value_biases_folded(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hk.get_backend(model, tok).logits(token_ids(), hk.zero_ablate("L1H1"))


# ------------------------------------------------------------------------------------------------- dead rows
@pytest.mark.parametrize("kind", ["tl", "tl-compat", "tl-hooked"])
def test_a_query_left_without_keys_gets_a_zero_row_through_the_adapter_and_plain_hooks(kind):
    """keys 0-2 blocked in L0H1: queries 0-2 have no key left, so that head attends nowhere there."""
    runner = shared_runner(kind, "llama")
    ids, mask = token_ids(), hk.mask_attention("L0H1", keys=[(0, 3)])
    seen = {}

    def keep(pattern, hook):
        seen["pattern"] = pattern.detach().clone()

    point = "blocks.0.attn.hook_pattern"
    adapter = runner.model.run_with_hooks(ids, fwd_hooks=[*hk_tl.fwd_hooks(runner.model, mask), (point, keep)])
    assert seen["pattern"][:, 1, :3].abs().max() == 0
    assert torch.allclose(seen["pattern"][:, 1, 3:].sum(-1), torch.ones(2, 6))  # live rows renormalised
    both = runner.model.run_with_hooks(
        ids, fwd_hooks=[("blocks.0.attn.hook_attn_scores", mask), (point, mask), (point, keep)]
    )
    assert seen["pattern"][:, 1, :3].abs().max() == 0 and torch.equal(both, adapter)
    scores_only = runner.model.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_attn_scores", mask), (point, keep)])
    if kind == "tl":  # finfo.min causal cells: a fully -inf row is NaN there (documented: attach at hook_pattern too)
        assert seen["pattern"][:, 1, :3].isnan().all() and scores_only.isnan().any()
    else:  # -inf causal cells and a NaN-safe softmax: the same zero row as a hand-written -inf hook
        assert seen["pattern"][:, 1, :3].abs().max() == 0 and max_diff(scores_only, adapter) <= 1e-6


# ------------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("kind", ["tl", "tl-hooked"])
def test_upstream_generate_baselines_without_headkit(kind):
    """What TransformerLens's own cached generate gives with no intervention, against recomputing each step.

    A canary: it asserts the upstream bugs are there, so it fails the day a release fixes one (then the
    workaround in TLBackend.generate, or the refusal, can go).

    Bridges (3.9, 4.3) read the KV cache only as past_key_values, which transformers stopped passing in 5.24;
    HookedTransformer 2.x builds its padding mask from zeros, so a tokenizer padding with 0 loses positions.
    headkit's TLBackend.generate is exact in both cases (test_exactness.py); these show the upstream part.
    """
    import transformers
    from packaging.version import Version

    runner = shared_runner(kind, "gpt2")
    ids = token_ids(batch=1, pos=5, seed=21)
    seq = ids.clone()
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, runner.model(seq)[:, -1:].argmax(-1)], dim=1)
    if kind == "tl":
        upstream = runner.model.generate(ids, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
        broken = Version(transformers.__version__) >= Version("5.24")
    else:
        tok = hk.models.tiny_tokenizer()  # pads with id 0
        runner.model.tokenizer = tok
        upstream = runner.model.generate(ids, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
        broken = importlib.util.find_spec("transformer_lens.model_bridge") is None  # 2.x
        if broken:
            with pytest.raises(hk.HeadkitError, match=r"pads with id 0.*pad_token = tokenizer.eos_token"):
                hk.get_backend(runner.model, tok).generate(ids, max_new_tokens=2)
        runner.model.tokenizer = None
    assert torch.equal(upstream, seq) is not broken
    assert torch.equal(runner.backend.generate(ids, max_new_tokens=6), seq)  # headkit's path: exact anyway


@needs_hooked
def test_generate_lends_the_backend_tokenizer_and_takes_it_back():
    runner = shared_runner("tl-hooked", "llama")
    assert runner.model.tokenizer is None
    runner.backend.generate(token_ids(batch=1, pos=4), max_new_tokens=2)
    assert runner.model.tokenizer is None
    with pytest.raises(hk.HeadkitError, match="L7H0"):  # taken back after an error too
        runner.backend.generate(token_ids(batch=1, pos=4), hk.zero_ablate("L7H0"), max_new_tokens=2)
    assert runner.model.tokenizer is None
    with pytest.raises(hk.HeadkitError, match=r"without a tokenizer.*get_backend\(model, tokenizer\)"):
        hk_tl.TLBackend(runner.model).generate(token_ids(batch=1, pos=4), max_new_tokens=2)


# ------------------------------------------------------------------------------------------------- analyses
def test_monte_carlo_and_the_study_equal_the_transformers_adapter(tl_pair):
    hooked, plain = tl_pair
    targets = own_targets(plain, PROMPTS)
    masks = montecarlo.bernoulli(24, 0.5, 2, 4, seed=3)
    for metric in ("top1", "margin", "logprob"):
        got = montecarlo.evaluate(hooked.backend, PROMPTS, targets, masks, metric=metric, progress=False)
        want = montecarlo.evaluate(plain.backend, PROMPTS, targets, masks, metric=metric, progress=False)
        assert max_diff(got, want) <= 1e-5, metric
    a = stochastic_ablation.study(hooked.backend, PROMPTS, targets, n_masks=12, p_keep=(0.4, 0.8), n_boot=5, progress=False)
    b = stochastic_ablation.study(plain.backend, PROMPTS, targets, n_masks=12, p_keep=(0.4, 0.8), n_boot=5, progress=False)
    for name in a.phases:
        assert torch.equal(a.phases[name].success, b.phases[name].success)
    assert max_diff(torch.tensor(a.scores["importance"].to_numpy()), torch.tensor(b.scores["importance"].to_numpy())) <= 1e-12


def test_gate_fitting_equals_the_transformers_adapter(tl_pair):
    hooked, plain = tl_pair
    targets = own_targets(plain, PROMPTS)
    data = Prompts.from_tokens(
        [plain.tokenizer(p)["input_ids"] for p in PROMPTS], [[int(t)] for t in targets]
    )
    kw = dict(seeds=2, steps=3, reg_steps=2, batch_size=3, progress=False)
    got, want = gating.fit(hooked.backend, data, **kw), gating.fit(plain.backend, data, **kw)
    for name in ("G", "G_plus", "G_minus"):
        assert max_diff(getattr(got, name), getattr(want, name)) <= 1e-5, name
    assert all(p.requires_grad for p in hooked.model.parameters())  # frozen for the fit only


def test_receiver_scan_and_suppression_equal_the_transformers_adapter(tl_pair):
    hooked, plain = tl_pair
    trace = hk.sentences.locate(plain.tokenizer, TEXT)
    got = receivers.scan(hooked.backend, [trace], proximity_ignore=1, progress=False)
    want = receivers.scan(plain.backend, [trace], proximity_ignore=1, progress=False)
    assert max_diff(got.vertical[0].nan_to_num(), want.vertical[0].nan_to_num()) <= 1e-5
    assert torch.equal(got.vertical[0].isnan(), want.vertical[0].isnan())
    got = suppression.kl_matrix(hooked.backend, trace, heads="L0H1 L1H0 L1H3", progress=False).matrix
    want = suppression.kl_matrix(plain.backend, trace, heads="L0H1 L1H0 L1H3", progress=False).matrix
    assert torch.equal(got.isnan(), want.isnan()) and max_diff(got.nan_to_num(), want.nan_to_num()) <= 1e-5
    assert got.nan_to_num().max() > 0


def test_copying_a_model_does_not_copy_headkit_state():
    """Nothing headkit keeps per model (the once-per-model warning set) survives into a deepcopy's identity."""
    runner = Runner("tl", "qwen2")  # its own: switched to compatibility mode below
    runner.model.enable_compatibility_mode(disable_warnings=True)  # processed weights: warned about
    with pytest.warns(UserWarning, match="value biases look folded"):
        runner.logits(token_ids(), hk.zero_ablate("L1H1"))
    clone = copy.deepcopy(runner.model)
    with pytest.warns(UserWarning, match="value biases look folded"):
        hk.get_backend(clone).logits(token_ids(), hk.zero_ablate("L1H1"))
