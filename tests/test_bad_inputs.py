"""A table of bad inputs, each one a HeadkitError (a ValueError) whose message names what was given and
gives a fix, with the model left exactly as it was: the intervention API through every adapter, the
analyses, the values built without a model, and the command line (exit code 2, one line, no traceback).

Each row is (what the user did, the call, a pattern the message must contain naming the input).
"""

from __future__ import annotations

import pytest
import torch

import headkit as hk
from headkit import gating, montecarlo, receivers, stochastic_ablation, suppression
from headkit.adapters import huggingface as hk_hf
from tests.conftest import Runner, attachments, shared_runner, token_ids

IDS = token_ids()  # [2, 9]; the tiny models have 2 layers of 4 query heads, d_head 16, vocabulary 100
PROMPTS = ["Tom eats apples . Tom eats", "the cat saw a dog . the cat saw a"]
TEXT = "the cat eats apples . Tom reads books . the dog saw a bird . Sarah wears hats . the man drinks milk ."


def right_padded():
    mask = torch.ones_like(IDS)
    mask[0, -2:] = 0
    return mask


def check(call, pattern, model=None):
    """The call raises a HeadkitError naming the input (pattern) with a fix, and leaves the model unchanged."""
    before = attachments(model) if model is not None else None
    with pytest.raises(hk.HeadkitError, match=pattern) as error:
        call()
    message = str(error.value)
    assert isinstance(error.value, ValueError) and "Fix:" in message and "; expected " in message, message
    if model is not None:
        assert attachments(model) == before, "something stayed attached"
    return message


# ------------------------------------------------------------------------------------------------- through each adapter
ADAPTER_CASES = [
    ("layer beyond the model", lambda b: b.logits(IDS, hk.zero_ablate("L2H0")), r"L2H0"),
    ("head beyond the model", lambda b: b.logits(IDS, hk.zero_ablate("L0H4")), r"L0H4"),
    ("gate of another model's shape", lambda b: b.logits(IDS, hk.gate(torch.ones(3, 4))), r"values of shape \[3, 4\]"),
    ("per-row gate for another batch", lambda b: b.logits(IDS, hk.gate(torch.ones(5, 2, 4))), r"per-row values have 5"),
    ("means of another model", lambda b: b.logits(IDS, hk.mean_ablate("L0H0", torch.zeros(2, 4, 8))), r"\[2, 4, 8\]"),
    ("per-position means too short", lambda b: b.logits(IDS, hk.mean_ablate("L0H0", torch.zeros(2, 5, 4, 16))),
     r"cover 5"),
    ("key range beyond the text", lambda b: b.logits(IDS, hk.mask_attention("L1H0", keys=[(5, 20)])), r"ending at 20"),
    ("query range beyond the text", lambda b: b.logits(IDS, hk.mask_attention("L1H0", keys=[(0, 2)], queries=[(3, 30)])),
     r"queries range ending at 30"),
    ("key mask of another length", lambda b: b.logits(IDS, hk.mask_attention("L0H0", keys=torch.ones(12, dtype=torch.bool))),
     r"over 12 positions"),
    ("per-row key mask for another batch", lambda b: b.logits(IDS, hk.mask_attention("L1H0", keys=torch.ones(3, 9, dtype=torch.bool))),
     r"per-row keys mask has 3"),
    ("pool span beyond the text", lambda b: b.logits(IDS, hk.capture_attention("L0H0", pool=[(0, 4), (4, 12)])),
     r"pool span ending at 12"),
    ("a lambda as intervention", lambda b: b.logits(IDS, lambda z, hook: z), r"<function .* as intervention 0"),
    ("a tensor as intervention", lambda b: b.logits(IDS, torch.ones(2, 4)), r"f32\[2, 4\] as intervention 0"),
    ("a string as intervention", lambda b: b.logits(IDS, "L0H0"), r"'L0H0' as intervention 0"),
    ("float token ids", lambda b: b.logits(IDS.float()), r"input_ids f32\[2, 9\] of dtype torch.float32"),
    ("bool token ids", lambda b: b.logits(IDS.bool()), r"input_ids bool\[2, 9\]"),
    ("1-D token ids", lambda b: b.logits(IDS[0]), r"input_ids i64\[9\]"),
    ("no tokens", lambda b: b.logits(IDS[:, :0]), r"input_ids i64\[2, 0\]"),
    ("a list of ids", lambda b: b.logits([[1, 5, 6]]), r"input_ids a list"),
    ("id beyond the vocabulary", lambda b: b.logits(torch.tensor([[1, 500]])), r"token id 500"),
    ("negative id", lambda b: b.logits(torch.tensor([[1, -3]])), r"token id -3"),
    ("ids on the meta device", lambda b: b.logits(IDS.to("meta")), r"input_ids on the meta device"),
    ("attention mask of another shape", lambda b: b.logits(IDS, attention_mask=torch.ones(2, 5, dtype=torch.long)),
     r"attention_mask i64\[2, 5\] for input_ids i64\[2, 9\]"),
    ("attention mask as a list", lambda b: b.logits(IDS, attention_mask=[[1] * 9] * 2), r"attention_mask a list"),
    ("attention mask with a 2", lambda b: b.logits(IDS, attention_mask=torch.full((2, 9), 2)), r"values other than 0 and 1"),
    ("positions of another shape", lambda b: b.logits(IDS, positions=torch.ones(2, 3, dtype=torch.bool)),
     r"positions bool\[2, 3\]"),
    ("positions not bool", lambda b: b.logits(IDS, positions=torch.ones(2, 9, dtype=torch.long)), r"positions i64\[2, 9\]"),
    ("positions and last_only", lambda b: b.logits(IDS, positions=torch.ones(2, 9, dtype=torch.bool), last_only=True),
     r"both last_only=True and positions"),
    ("last_only on right padding", lambda b: b.logits(IDS, attention_mask=right_padded(), last_only=True),
     r"last column has padding"),
    ("generate from a bad id", lambda b: b.generate(torch.tensor([[1, 700]]), max_new_tokens=2), r"token id 700"),
    ("generate with an impossible head", lambda b: b.generate(IDS[:1], hk.zero_ablate("L3H0"), max_new_tokens=2),
     r"L3H0"),
]


@pytest.mark.parametrize("kind", ["hf-sdpa", "tl", "nnsight-eager"])
@pytest.mark.parametrize("what, call, pattern", ADAPTER_CASES, ids=[c[0] for c in ADAPTER_CASES])
def test_bad_input_through_every_adapter(kind, what, call, pattern):
    runner = shared_runner(kind, "llama")
    clean = runner.backend.logits(IDS)  # (also lets a bridge add the hooks of its first pass)
    check(lambda: call(runner.backend), pattern, runner.model)
    assert torch.equal(runner.backend.logits(IDS), clean)


# ------------------------------------------------------------------------------------------------- without a model
BUILD_CASES = [
    ("gate of ints", lambda: hk.gate(torch.ones(2, 4, dtype=torch.int64)), r"values i64\[2, 4\] of a non-float dtype"),
    ("gate 1-D", lambda: hk.gate(torch.ones(4)), r"values f32\[4\]"),
    ("gate 4-D", lambda: hk.gate(torch.ones(1, 1, 2, 4)), r"values f32\[1, 1, 2, 4\]"),
    ("gate a list", lambda: hk.gate([[1.0] * 4] * 2), r"values a list"),
    ("gate with NaN", lambda: hk.gate(torch.tensor([[1.0, float("nan")]])), r"f32\[1, 2\] containing NaN or inf"),
    ("gate with inf", lambda: hk.gate(torch.tensor([[float("inf"), 1.0]])), r"containing NaN or inf"),
    ("gate on the meta device", lambda: hk.gate(torch.ones(2, 4, device="meta")), r"gate values got a tensor on the meta"),
    ("keys empty", lambda: hk.mask_attention("L0H0", keys=[]), r"keys got \[\]"),
    ("keys an empty range", lambda: hk.mask_attention("L0H0", keys=[(3, 3)]), r"an empty range \(3, 3\)"),
    ("keys reversed", lambda: hk.mask_attention("L0H0", keys=[(5, 2)]), r"a reversed range \(5, 2\)"),
    ("keys negative", lambda: hk.mask_attention("L0H0", keys=[(-1, 2)]), r"\(-1, 2\) with a negative start"),
    ("keys of floats", lambda: hk.mask_attention("L0H0", keys=[(0.5, 2)]), r"range \(0\.5, 2\)"),
    ("keys a triple", lambda: hk.mask_attention("L0H0", keys=[(0, 1, 2)]), r"range \(0, 1, 2\)"),
    ("keys a string", lambda: hk.mask_attention("L0H0", keys="0:3"), r"keys got '0:3'"),
    ("keys a float tensor", lambda: hk.mask_attention("L0H0", keys=torch.ones(5)), r"keys got f32\[5\]"),
    ("keys a 3-D tensor", lambda: hk.mask_attention("L0H0", keys=torch.ones(1, 2, 5, dtype=torch.bool)), r"bool\[1, 2, 5\]"),
    ("keys a numpy array", lambda: hk.mask_attention("L0H0", keys=__import__("numpy").ones(20, bool)),
     r"keys got a ndarray bool\[20\]"),
    ("keys on the meta device", lambda: hk.mask_attention("L0H0", keys=torch.ones(5, dtype=torch.bool, device="meta")),
     r"keys got a tensor on the meta device"),
    ("queries reversed", lambda: hk.mask_attention("L0H0", keys=[(0, 2)], queries=[(4, 1)]), r"queries got a reversed"),
    ("mask without heads", lambda: hk.mask_attention("", keys=[(0, 1)]), r"mask_attention got no heads"),
    ("heads half written", lambda: hk.zero_ablate("L0H0 L1"), r"could not read 'L1'"),
    ("heads in another notation", lambda: hk.zero_ablate("0.1"), r"could not read '0.1'"),
    ("heads as a float dict", lambda: hk.Heads({0: 1.5}), r"Heads got \{0: 1\.5\}"),
    ("heads as a string dict", lambda: hk.Heads({0: "1"}), r"Heads got \{0: '1'\}"),
    ("a fractional head", lambda: hk.Heads([(0, 1.5)]), r"Heads got \(0, 1\.5\)"),
    ("a negative layer", lambda: hk.Heads([(-1, 0)]), r"Heads got \(-1, 0\)"),
    ("heads as a number", lambda: hk.Heads(3.5), r"Heads got a float"),
    ("parse a number", lambda: hk.Heads.parse(5), r"Heads.parse got a int"),
    ("a float head mask", lambda: hk.Heads.from_mask(torch.ones(2, 4)), r"from_mask got f32\[2, 4\]"),
    ("a meta head mask", lambda: hk.Heads.from_mask(torch.ones(2, 4, dtype=torch.bool, device="meta")), r"meta device"),
    ("means with NaN", lambda: hk.mean_ablate("L0H0", torch.full((2, 4, 16), float("nan"))), r"containing NaN or inf"),
    ("means of ints", lambda: hk.mean_ablate("L0H0", torch.zeros(2, 4, 16, dtype=torch.int32)), r"means i32\[2, 4, 16\]"),
    ("means 2-D", lambda: hk.mean_ablate("L0H0", torch.zeros(4, 16)), r"means f32\[4, 16\]"),
    ("means on the meta device", lambda: hk.mean_ablate("L0H0", torch.zeros(2, 4, 16, device="meta")), r"meta device"),
    ("pool with an empty span", lambda: hk.capture_attention("L0H0", pool=[(0, 2), (2, 2)]), r"pool got an empty range"),
    ("pool empty", lambda: hk.capture_attention("L0H0", pool=[]), r"pool got \[\]"),
    ("bernoulli of no masks", lambda: montecarlo.bernoulli(0, 0.3, 2, 4), r"n=0"),
    ("bernoulli with negative layers", lambda: montecarlo.bernoulli(5, 0.3, -1, 4), r"n_layers=-1"),
    ("bernoulli with no heads", lambda: montecarlo.bernoulli(5, 0.3, 2, 0), r"n_heads=0"),
    ("bernoulli p above 1", lambda: montecarlo.bernoulli(5, 1.5, 2, 4), r"p_keep=1\.5"),
    ("bernoulli p a word", lambda: montecarlo.bernoulli(5, "half", 2, 4), r"p_keep='half'"),
    ("get_backend of an object", lambda: hk.get_backend(object()), r"get_backend got a builtins\.object"),
]


@pytest.mark.parametrize("what, call, pattern", BUILD_CASES, ids=[c[0] for c in BUILD_CASES])
def test_bad_values_are_refused_where_they_are_built(what, call, pattern):
    check(call, pattern)


# ------------------------------------------------------------------------------------------------- analyses
@pytest.fixture(scope="module")
def tiny():
    runner = Runner("hf-sdpa", "llama")
    with torch.no_grad():
        targets = torch.stack([runner.plain(torch.tensor([runner.tokenizer(p)["input_ids"]])).logits[0, -1].argmax()
                               for p in PROMPTS])
    return runner, targets


def masks(n=4):
    return montecarlo.bernoulli(n, 0.5, 2, 4)


def a_file(tmp_path_factory=None):
    import tempfile

    handle = tempfile.NamedTemporaryFile(suffix=".txt", delete=False)
    handle.write(b"not a folder")
    handle.close()
    return handle.name


def evaluate(r, t, **kw):
    args = {"prompts": PROMPTS, "targets": t, "masks": masks(), "tokenizer": r.tokenizer, "progress": False, **kw}
    return montecarlo.evaluate(r.model, args.pop("prompts"), args.pop("targets"), args.pop("masks"), **args)


def study(r, t, **kw):
    return stochastic_ablation.study(r.model, PROMPTS, t, tokenizer=r.tokenizer, progress=False,
                                     **{"n_masks": 4, "p_keep": (0.4, 0.8), "n_boot": 0, **kw})


ANALYSIS_CASES = [
    ("prompts as one string", lambda r, t: evaluate(r, t, prompts="a string"), r"prompts as one string \('a string'\)"),
    ("no prompts", lambda r, t: evaluate(r, t, prompts=[]), r"prompts \[\]"),
    ("an empty prompt", lambda r, t: evaluate(r, t, prompts=["", "x"]), r"prompts \['', 'x'\]"),
    ("targets as one string", lambda r, t: evaluate(r, " apples"), r"targets as one string \(' apples'\)"),
    ("a multi-token target", lambda r, t: evaluate(r, [" apples", " dog cat"]), r"target ' dog cat' for prompt 1"),
    ("a target id beyond the vocabulary", lambda r, t: evaluate(r, torch.tensor([3, 500])), r"target id 500"),
    ("a negative target id", lambda r, t: evaluate(r, torch.tensor([3, -1])), r"target id -1"),
    ("float target ids", lambda r, t: evaluate(r, t.float()), r"targets f32\[2\]"),
    ("targets for other prompts", lambda r, t: evaluate(r, t[:1]), r"1 targets for 2 prompts"),
    ("masks of another model", lambda r, t: evaluate(r, t, masks=torch.ones(4, 3, 4)), r"masks f32\[4, 3, 4\]"),
    ("no masks", lambda r, t: evaluate(r, t, masks=torch.ones(0, 2, 4)), r"0 masks"),
    ("NaN masks", lambda r, t: evaluate(r, t, masks=torch.full((2, 2, 4), float("nan"))), r"masks f32\[2, 2, 4\] with NaN"),
    ("an unknown metric", lambda r, t: evaluate(r, t, metric="accuracy"), r"metric 'accuracy'"),
    ("logit_diff without distractors", lambda r, t: evaluate(r, t, metric="logit_diff"), r"logit_diff' without distractors"),
    ("rows_per_pass 0", lambda r, t: evaluate(r, t, rows_per_pass=0), r"rows_per_pass=0"),
    ("rows_per_pass a float", lambda r, t: evaluate(r, t, rows_per_pass=2.5), r"rows_per_pass=2\.5"),
    ("an attention mask with strings", lambda r, t: evaluate(r, t, attention_mask=torch.ones(2, 9)),
     r"prompts as strings and an attention_mask"),
    ("ids with a mask of another shape", lambda r, t: evaluate(r, t, prompts=IDS, attention_mask=torch.ones(2, 4)),
     r"attention_mask f32\[2, 4\] for prompts i64\[2, 9\]"),
    ("right-padded ids", lambda r, t: evaluate(r, t, prompts=IDS, attention_mask=right_padded()),
     r"last column has padding"),
    ("study of one mask", lambda r, t: study(r, t, n_masks=1), r"n_masks=1"),
    ("study percentile 150", lambda r, t: study(r, t, percentile=150), r"percentile=150"),
    ("study percentile 0", lambda r, t: study(r, t, percentile=0), r"percentile=0"),
    ("study with 4 calibration masks", lambda r, t: study(r, t, p_keep="auto", calibration_masks=4),
     r"calibration_masks=4"),
    ("study with negative bootstrap", lambda r, t: study(r, t, n_boot=-1), r"n_boot=-1"),
    ("study p_keep out of range", lambda r, t: study(r, t, p_keep=(0.0, 2.0)), r"p_keep=\(0\.0, 2\.0\)"),
    ("study p_keep a word", lambda r, t: study(r, t, p_keep="half"), r"p_keep='half'"),
    ("study success out of range", lambda r, t: study(r, t, p_keep="auto", success=(0.5, 1.5)), r"success=\(0\.5, 1\.5\)"),
    ("study path is a file", lambda r, t: study(r, t, path=a_file()), r"path='.*\.txt', which is a file"),
    ("study prompts without targets", lambda r, t: stochastic_ablation.study(r.model, PROMPTS, tokenizer=r.tokenizer),
     r"prompts without targets"),
    ("calibrate with 4 masks", lambda r, t: montecarlo.calibrate(r.model, PROMPTS, t, tokenizer=r.tokenizer, n_masks=4),
     r"n_masks=4"),
    ("compute_means rows_per_pass 0", lambda r, t: hk.compute_means(r.model, IDS, rows_per_pass=0), r"rows_per_pass=0"),
    ("compute_means rows_per_pass -1", lambda r, t: hk.compute_means(r.model, IDS, rows_per_pass=-1), r"rows_per_pass=-1"),
    ("compute_means mask a list", lambda r, t: hk.compute_means(r.model, IDS, attention_mask=[[1] * 9] * 2),
     r"attention_mask a list"),
    ("compute_means on all padding", lambda r, t: hk.compute_means(r.model, IDS, attention_mask=torch.zeros(2, 9)),
     r"attention_mask f32\[2, 9\] that is all padding"),
    ("compute_means of 1-D ids", lambda r, t: hk.compute_means(r.model, IDS[0]), r"input_ids i64\[9\]"),
    ("sequence_logprob gates of another shape",
     lambda r, t: gating.sequence_logprob(r.model, [("Tom eats", " apples")], torch.ones(3, 4), tokenizer=r.tokenizer),
     r"gates f32\[3, 4\] for a model with 2 layers"),
    ("sequence_logprob rows_per_pass 0",
     lambda r, t: gating.sequence_logprob(r.model, [("Tom eats", " apples")], rows_per_pass=0, tokenizer=r.tokenizer),
     r"rows_per_pass=0"),
    ("fit with negative steps", lambda r, t: gating.fit(r.model, [("Tom eats", " apples")], steps=-1, tokenizer=r.tokenizer),
     r"steps=-1"),
    ("fit with batch 0", lambda r, t: gating.fit(r.model, [("Tom eats", " apples")], batch_size=0, tokenizer=r.tokenizer),
     r"batch_size=0"),
    ("fit with repeated seeds", lambda r, t: gating.fit(r.model, [("Tom eats", " apples")], seeds=[1, 1], tokenizer=r.tokenizer),
     r"seeds=\[1, 1\]"),
    ("scan with negative proximity",
     lambda r, t: receivers.scan(r.model, [hk.sentences.locate(r.tokenizer, TEXT)], proximity_ignore=-1, progress=False),
     r"proximity_ignore=-1"),
    ("suppression of a head the model lacks",
     lambda r, t: suppression.kl_matrix(r.model, hk.sentences.locate(r.tokenizer, TEXT), heads="L9H0", progress=False),
     r"L9H0"),
    ("the transformers adapter on a bridge", lambda r, t: hk_hf.applied(shared_runner("tl", "llama").model).__enter__(),
     r"got a TransformerLens TransformerBridge.*headkit\.adapters\.transformer_lens"),
]


@pytest.mark.parametrize("what, call, pattern", ANALYSIS_CASES, ids=[c[0] for c in ANALYSIS_CASES])
def test_bad_input_to_the_analyses(tiny, what, call, pattern):
    runner, targets = tiny
    clean = runner.backend.logits(IDS)
    check(lambda: call(runner, targets), pattern, runner.model)
    assert torch.equal(runner.backend.logits(IDS), clean)
    assert all(p.requires_grad for p in runner.model.parameters())


# ------------------------------------------------------------------------------------------------- command line
CLI_CASES = [  # {missing}, {latin}, {empty}, {untabbed}, {taken}: files made in the test's folder
    ("mc --p-keep x", ["mc", "--p-keep", "x"], r"--p-keep 'x'"),
    ("mc --p-keep 0.3", ["mc", "--p-keep", "0.3"], r"--p-keep 0\.3;"),
    ("mc --p-keep 0,1", ["mc", "--p-keep", "0,1"], r"--p-keep 0\.0,1\.0"),
    ("mc --masks 1", ["mc", "--masks", "1"], r"--masks 1"),
    ("mc --prompts missing", ["mc", "--prompts", "{missing}"], r"missing\.tsv"),
    ("mc --prompts latin-1", ["mc", "--prompts", "{latin}"], r"latin1\.txt' is not UTF-8"),
    ("mc --prompts empty", ["mc", "--prompts", "{empty}"], r"empty\.tsv' holds no prompt"),
    ("mc --prompts untabbed", ["mc", "--prompts", "{untabbed}"], r"untabbed\.tsv: line 1"),
    ("mc --out a file", ["mc", "--out", "{taken}"], r"--out '.*taken\.txt' is a file"),
    ("mc --device nonsense", ["mc", "--device", "nonsense"], r"--device 'nonsense'"),
    ("mc --device cuda:7", ["mc", "--device", "cuda:7"], r"--device 'cuda:7'"),
    ("chg --ks a,b", ["chg", "--ks", "a,b"], r"--ks 'a,b'"),
    ("chg --out a file", ["chg", "--out", "{taken}"], r"--out '.*taken\.txt' is a file"),
    ("receivers missing", ["receivers", "{missing}"], r"missing\.tsv"),
    ("receivers latin-1", ["receivers", "{latin}"], r"latin1\.txt' is not UTF-8"),
    ("suppress missing", ["suppress", "{missing}"], r"missing\.tsv"),
    ("suppress --heads L5X1", ["suppress", "--heads", "L5X1"], r"'L5X1'"),
    ("triad --out a file", ["triad", "--out", "{taken}"], r"--out '.*taken\.txt' is a file"),
]


@pytest.mark.parametrize("what, argv, pattern", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_command_lines_exit_2_with_one_line_and_no_traceback(what, argv, pattern, tmp_path, capsys):
    import re

    from headkit import cli

    files = {"missing": tmp_path / "missing.tsv", "latin": tmp_path / "latin1.txt", "empty": tmp_path / "empty.tsv",
             "untabbed": tmp_path / "untabbed.tsv", "taken": tmp_path / "taken.txt"}
    files["latin"].write_bytes("café\tau lait\n".encode("latin-1"))
    files["empty"].write_text("\n\n")
    files["untabbed"].write_text("no tab here\n")
    files["taken"].write_text("x")
    if "cuda" in what and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    code = cli.main([arg.format(**{k: str(v) for k, v in files.items()}) for arg in argv])  # never loads a model
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("headkit: "), captured.err
    assert "Traceback" not in captured.err and "Fix:" in lines[0]
    assert re.search(pattern, lines[0]), (what, lines[0])


def test_the_table_is_as_large_as_promised():
    total = 3 * len(ADAPTER_CASES) + len(BUILD_CASES) + len(ANALYSIS_CASES) + len(CLI_CASES)
    assert total >= 150, total


# ------------------------------------------------------------------------------------------------- the sweep engine
def test_the_sweep_engine_names_bad_input():
    from headkit.readouts import NextToken
    from headkit.sweep import Rows, gates, sweep

    model, _ = hk.models.tiny("llama")
    backend = hk.get_backend(model)
    ids = torch.tensor([[1, 5, 6], [1, 7, 8]])
    read = NextToken(torch.tensor([5, 6]))
    cases = [
        (lambda: sweep(backend, ids[0], None, read), r"sweep got input_ids i64\[3\].*padded token ids"),
        (lambda: sweep(backend, ids, None, "logprob"), r"sweep got readout 'logprob'.*NextToken"),
        (lambda: sweep(backend, ids, None, read, gates(torch.ones(2, 2, 4)), Rows.product(3, 2)),
         r"variant 2 and prompt 1.*variant indices below 2"),
        (lambda: sweep(backend, ids, None, read, None, Rows(torch.zeros(3), torch.tensor([0, 1, 2]))),
         r"prompt 2.*prompt indices below 2"),
        (lambda: sweep(backend, ids, None, read, rows_per_pass=0), r"rows_per_pass=0"),
    ]
    for call, match in cases:
        with pytest.raises(hk.HeadkitError, match=match):
            call()
