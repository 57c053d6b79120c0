"""nnsight specifics: what a remote request needs, invokes, captures coming back, gradients, bad input and
remote failures. (Every intervention's exactness through nnsight runs in test_exactness.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES
from nnsight import CONFIG, TransformersModel

import headkit as hk
from headkit.adapters import nnsight as hk_nn
from tests.conftest import ARCHS, max_diff, shared_runner, token_ids
from tests.ndif import PICKLE_MACHINERY, TRACE_MODULES, StrictRemote

# A module shipped by value carries its __spec__/__loader__ (importlib's bootstrap) and, with
# `from __future__ import annotations`, the `annotations` feature object; operator is _operator in C.
MODULE_OBJECTS = {"_frozen_importlib", "_frozen_importlib_external", "__future__", "_operator"}


def nnsight_model(arch="llama", impl="eager", seed=0):
    model, _ = hk.models.tiny(arch, attn_implementation=impl, seed=seed)
    return TransformersModel(model, tokenizer=hk.models.tiny_tokenizer())


def every_intervention(shape):
    return [
        hk.zero_ablate("L0H1 L1H3"),
        hk.mean_ablate("L1H2", torch.randn(shape.n_layers, shape.n_heads, shape.d_head)),
        hk.gate(torch.rand(2, shape.n_layers, shape.n_heads)),
        hk.mask_attention("L1H0 L0H2", keys=[(0, 3)], queries=[(2, 9)]),
        hk.mask_attention("L1H1", keys=torch.eye(2, 9, dtype=torch.bool)),
        hk.capture_attention("L1H0 L0H3"),
        hk.capture_attention("L1H1", pool=[(0, 4), (4, 9)]),
    ]


def traced(model, ids, interventions, **where):
    with model.trace(ids, **where):
        captured = hk_nn.apply(model, *interventions)
        logits = model.output.logits.save()
    return logits, captured


# ------------------------------------------------------------------------------------------------- remote readiness
@pytest.mark.parametrize("arch", ARCHS)
def test_a_remote_request_needs_only_what_ndif_has(arch):
    model = nnsight_model(arch)
    ids = token_ids()
    interventions = every_intervention(hk.get_backend(model).shape)
    local, local_captured = traced(model, ids, interventions)
    server = StrictRemote(model)
    remote, remote_captured = traced(model, ids, interventions, backend=server)
    assert torch.equal(remote, local)
    assert len(remote_captured) == 2 and all(
        torch.equal(remote_captured[i][key], local_captured[i][key]) for i in range(2) for key in local_captured[i]
    )
    assert server.roots() <= TRACE_MODULES | PICKLE_MACHINERY | MODULE_OBJECTS, server.roots()
    assert not server.roots() & {"headkit", "jaxtyping"}
    # every function travelled as source (cloudpickle's bytecode fallback would tie it to one Python version)
    assert ("cloudpickle.cloudpickle", "_make_function") not in server.names
    assert ("nnsight.intervention.serialization", "_load_function") in server.names


def test_the_simulated_server_rebuilds_headkit_classes_without_touching_the_clients():
    """tests/ndif.py rebuilds a request as a fresh server process would: in one process cloudpickle would
    otherwise rebuild the classes shipped by value into headkit's own, replacing their methods."""
    from headkit import interventions

    classes = [c for c in vars(interventions).values()
               if isinstance(c, type) and issubclass(c, interventions.Intervention)]
    methods = {c: {k: v for k, v in vars(c).items() if callable(v)} for c in classes}
    model = nnsight_model("llama")
    traced(model, token_ids(), every_intervention(hk.get_backend(model).shape), backend=StrictRemote(model))
    for c in classes:  # (pickling may add __slotnames__, copyreg's cache, which changes no behaviour)
        assert {k: v for k, v in vars(c).items() if callable(v)} == methods[c], c
        assert all(f.__module__ == "headkit.interventions" for f in methods[c].values() if hasattr(f, "__code__")), c


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_nnsight_local_simulation_equals_the_plain_trace(arch):
    model = nnsight_model(arch)
    ids = token_ids()
    for interventions in [[iv] for iv in every_intervention(hk.get_backend(model).shape)]:
        local, _ = traced(model, ids, interventions)
        simulated, _ = traced(model, ids, interventions, remote="local")
        assert torch.equal(simulated, local), interventions


def test_naming_the_headkit_package_in_a_remote_block_stops_on_the_client():
    model = nnsight_model()
    with pytest.raises(hk.HeadkitError, match=r"refers to headkit(\.\w+)?, which cannot travel.*build the interventions before"):
        with model.trace(token_ids(), backend=StrictRemote(model)):
            hk_nn.apply(model, hk.zero_ablate("L0H1"))  # hk. inside a remote block
    with model.trace(token_ids()):  # locally nothing is shipped, so the same block is fine
        hk_nn.apply(model, hk.zero_ablate("L0H1"))


def test_without_registration_the_server_could_not_run_it():
    # the check above can fail: unregister headkit and the simulated server cannot find it
    model = nnsight_model()
    _PICKLE_BY_VALUE_MODULES.discard("headkit")
    try:
        with pytest.raises(ModuleNotFoundError, match="headkit"):
            traced(model, token_ids(), [hk.zero_ablate("L0H1")], backend=StrictRemote(model))
    finally:
        _PICKLE_BY_VALUE_MODULES.add("headkit")


# ------------------------------------------------------------------------------------------------- invokes
def test_per_invoke_gates_equal_separate_runs():
    model = nnsight_model("qwen2")
    ids = token_ids(batch=3, seed=21)
    gates = torch.rand(3, 2, 4, generator=torch.Generator().manual_seed(5))
    with model.trace() as tracer:
        with tracer.invoke(ids[:1]):
            hk_nn.apply(model, hk.gate(gates[0]))
            first = model.output.logits.save()
        with tracer.invoke(ids[1:]):
            hk_nn.apply(model, hk.gate(gates[1:]))  # per row within the invoke: [invoke rows, layers, heads]
            rest = model.output.logits.save()
    for row, got in [(0, first[0]), (1, rest[0]), (2, rest[1])]:
        alone, _ = traced(model, ids[row : row + 1], [hk.gate(gates[row])])
        assert max_diff(got, alone[0]) <= 1e-5  # batch 1 vs 2 picks other kernels: ~1e-6 apart


def test_masks_apply_to_the_whole_batch_from_an_empty_invoke():
    model = nnsight_model("llama", impl="sdpa")
    ids = token_ids(batch=2, seed=22)
    keys = torch.zeros(2, 9, dtype=torch.bool)
    keys[0, 1:3] = keys[1, 4:7] = True
    with model.trace() as tracer:
        with tracer.invoke(ids[:1]):
            first = model.output.logits.save()
        with tracer.invoke(ids[1:]):
            second = model.output.logits.save()
        with tracer.invoke():  # the whole batch: write every row's mask at once
            hk_nn.apply(model, hk.mask_attention("L1H2 L0H0", keys=keys))
    for row, got in [(0, first), (1, second)]:
        alone, _ = traced(model, ids[row : row + 1], [hk.mask_attention("L1H2 L0H0", keys=keys[row])])
        assert max_diff(got, alone) <= 1e-5


def test_masks_inside_one_of_several_invokes_are_refused():
    model = nnsight_model("llama", impl="sdpa")
    ids = token_ids(batch=2)
    with pytest.raises(hk.HeadkitError, match=r"inside one of several invokes.*empty `tracer.invoke\(\)`"):
        with model.trace() as tracer:
            with tracer.invoke(ids[:1]):
                hk_nn.apply(model, hk.mask_attention("L1H2", keys=[(0, 3)]))
            with tracer.invoke(ids[1:]):
                model.output.logits.save()


# ------------------------------------------------------------------------------------------------- captures
def test_captures_fill_in_place_locally_and_come_back_as_dicts():
    model = nnsight_model("gemma3")
    ids = token_ids()
    cap = hk.capture_attention("L3H1 L0H2")
    with model.trace(ids):
        patterns, = hk_nn.apply(model, hk.zero_ablate("L1H0"), cap)
    assert set(patterns) == {(0, 2), (3, 1)}
    assert torch.equal(patterns[3, 1], cap.pattern(3, 1)) and patterns[0, 2].shape == (2, 9, 9)
    ablate, remote_cap = hk.zero_ablate("L1H0"), hk.capture_attention("L3H1 L0H2")  # built outside the block
    with model.trace(ids, backend=StrictRemote(model)):
        remote_patterns, = hk_nn.apply(model, ablate, remote_cap)
    assert all(torch.equal(remote_patterns[k], patterns[k]) for k in patterns)
    # the backend fills the caller's own capture object even after a remote run
    backend = hk_nn.NNsightBackend(model, remote=StrictRemote(model))
    mine = hk.capture_attention("L3H1 L0H2")
    backend.logits(ids, hk.zero_ablate("L1H0"), mine)
    assert torch.equal(mine.pattern(0, 2), patterns[0, 2])


def test_capture_needs_eager_attention():
    model = nnsight_model("llama", impl="sdpa")
    with pytest.raises(hk.HeadkitError, match=r"no attention weights.*'sdpa'.*attn_implementation=\"eager\""):
        traced(model, token_ids(), [hk.capture_attention("L0H0")])


# ------------------------------------------------------------------------------------------------- gradients
def test_a_gate_fitting_step_works_locally_and_matches_the_transformers_adapter():
    model = nnsight_model("llama", impl="sdpa")
    for p in model._module.parameters():
        p.requires_grad_(False)
    ids, target = token_ids(), torch.tensor([7, 9])

    def loss_of(logits):
        return -torch.log_softmax(logits[:, -1], -1)[torch.arange(2), target].mean()

    gate = torch.nn.Parameter(torch.full((2, 4), 2.0))
    optimizer = torch.optim.Adam([gate], lr=0.1)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        logits, _ = traced(model, ids, [hk.gate(torch.sigmoid(gate))])
        loss = loss_of(logits)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert losses[-1] < losses[0]
    # the same gradient through plain transformers
    probe = torch.nn.Parameter(torch.rand(2, 4))
    loss_of(traced(model, ids, [hk.gate(probe)])[0]).backward()
    reference = probe.detach().clone().requires_grad_(True)
    loss_of(hk.get_backend(model._module).logits(ids, hk.gate(reference))).backward()
    assert max_diff(probe.grad, reference.grad) <= 1e-6


def test_remote_gradients_come_back_when_saved_inside_the_trace():
    model = nnsight_model("gemma3", impl="sdpa")
    for p in model._module.parameters():
        p.requires_grad_(False)
    ids = token_ids()
    values = torch.rand(4, 4, generator=torch.Generator().manual_seed(6)).requires_grad_(True)
    logits, _ = traced(model, ids, [hk.gate(values)])
    logits[:, -1].logsumexp(-1).sum().backward()
    local_grad = values.grad.clone()
    remote_values = values.detach().clone().requires_grad_(True)
    gate = hk.gate(remote_values)
    with model.trace(ids, backend=StrictRemote(model)):
        hk_nn.apply(model, gate)
        loss = model.output.logits[:, -1].logsumexp(-1).sum()
        loss.backward()
        grad = remote_values.grad.save()
    assert remote_values.grad is None  # the server worked on a copy: only the saved gradient comes back
    assert max_diff(grad, local_grad) <= 1e-6


# ------------------------------------------------------------------------------------------------- bad input
def test_apply_outside_a_trace():
    with pytest.raises(hk.HeadkitError, match=r"outside a trace.*into the with block"):
        hk_nn.apply(nnsight_model(), hk.zero_ablate("L0H0"))


def test_unsupported_module_layouts():
    from nnsight import NNsight
    from transformers import BertConfig, BertModel

    bert = NNsight(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)))
    with pytest.raises(hk.HeadkitError, match=r"model_type 'bert'.*supported architecture"):
        with bert.trace(torch.tensor([[1, 2, 3]])):
            hk_nn.apply(bert, hk.zero_ablate("L0H0"))
    with pytest.raises(hk.HeadkitError, match=r"NNsightBackend got a LlamaForCausalLM.*TransformersModel"):
        hk_nn.NNsightBackend(hk.models.tiny("llama")[0])


def test_masks_need_an_implementation_that_honours_4d_masks():
    model = nnsight_model("llama", impl="sdpa")
    model._module.config._attn_implementation = "flash_attention_2"  # as if loaded with flash attention
    try:
        with pytest.raises(hk.HeadkitError, match=r"'flash_attention_2'.*set_attn_implementation"):
            with model.trace(token_ids()):
                hk_nn.apply(model, hk.mask_attention("L0H0", keys=[(0, 2)]))
    finally:
        model._module.config._attn_implementation = "sdpa"


def test_errors_leave_the_model_as_it_was():
    model = nnsight_model("qwen2")
    ids = token_ids()
    before, _ = traced(model, ids, [])
    with pytest.raises(hk.HeadkitError):
        traced(model, ids, [hk.zero_ablate("L0H1"), hk.gate(torch.ones(3, 4))])
    after, _ = traced(model, ids, [])
    assert torch.equal(before, after)


# ------------------------------------------------------------------------------------------------- remote failures
SECRET = "ndif-test-key-3f9a7c"


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setattr(CONFIG.API, "APIKEY", SECRET)
    return SECRET


def remote_model():
    model = nnsight_model()
    model._module.config._name_or_path = "meta-llama/Llama-3.1-8B"
    return model


def test_no_api_key(monkeypatch, capsys):
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(hk.HeadkitError, match=r"no NDIF API key.*NDIF_API_KEY.*nnsight.login"):
        hk_nn.NNsightBackend(remote_model(), remote=True).logits(token_ids())


def test_unreachable_ndif(api_key, monkeypatch, capsys, caplog):
    import httpx
    import nnsight.ndif

    def refuse(path, **kwargs):
        raise httpx.ConnectError(f"[Errno 111] Connection refused (sent key {SECRET})")

    monkeypatch.setattr(nnsight.ndif, "_get", refuse)
    with pytest.raises(hk.HeadkitError, match=r"could not reach NDIF.*ConnectError.*NDIF_HOST") as err:
        hk_nn.NNsightBackend(remote_model(), remote=True).logits(token_ids())
    assert SECRET not in str(err.value) and "<NDIF_API_KEY>" in str(err.value)
    assert SECRET not in capsys.readouterr().out + capsys.readouterr().err + caplog.text


def test_model_not_served(api_key, monkeypatch):
    import nnsight.ndif

    monkeypatch.setattr(nnsight.ndif, "_get", lambda path, **kw: {"deployments": {}})
    monkeypatch.setattr(nnsight.ndif, "is_model_running", lambda repo, **kw: False)
    with pytest.raises(hk.HeadkitError, match=r"'meta-llama/Llama-3.1-8B' is not served.*nnsight.status"):
        hk_nn.NNsightBackend(remote_model(), remote=True).logits(token_ids())


def test_a_failed_remote_run_is_reported_without_the_key(api_key, monkeypatch, capsys, caplog):
    import nnsight.ndif
    from nnsight.intervention.backends.remote import RemoteBackend, RemoteError

    monkeypatch.setattr(nnsight.ndif, "_get", lambda path, **kw: {})
    monkeypatch.setattr(nnsight.ndif, "is_model_running", lambda repo, **kw: True)
    monkeypatch.setattr(TransformersModel, "to_model_key", lambda self: "model-key")

    def fail(self, request, tracer):
        raise RemoteError(f"Failed to send request: 401 invalid api key {self.api_key}")

    monkeypatch.setattr(RemoteBackend, "request", fail)
    with pytest.raises(hk.HeadkitError, match=r"remote run failed: RemoteError.*401.*NDIF_API_KEY") as err:
        hk_nn.NNsightBackend(remote_model(), remote=True).logits(token_ids(), hk.zero_ablate("L0H1"))
    assert SECRET not in str(err.value)
    assert SECRET not in capsys.readouterr().out + caplog.text


# ------------------------------------------------------------------------------------------------- three adapters
@pytest.mark.parametrize("arch", ARCHS)
def test_nnsight_transformers_and_transformer_lens_agree(arch):
    # eager: TransformerLens computes attention eagerly; against sdpa tiny Gemma 3 already differs by ~1e-5
    runners = [shared_runner(adapter, arch) for adapter in ("nnsight-eager", "hf-eager", "tl")]
    ids = token_ids(batch=3, seed=23)
    shape = runners[0].shape
    means = hk.compute_means(runners[0].model, token_ids(batch=4, seed=24))  # through nnsight
    assert max_diff(means, hk.compute_means(runners[1].model, token_ids(batch=4, seed=24))) <= 1e-6
    cases = [
        [hk.zero_ablate("L0H1 L1H3")],
        [hk.mean_ablate("L1H0", means)],
        [hk.gate(torch.rand(3, shape.n_layers, shape.n_heads, generator=torch.Generator().manual_seed(8)))],
        [hk.mask_attention("L0H2 L1H1", keys=[(0, 3)], queries=[(2, 9)]), hk.zero_ablate("L0H0")],
    ]
    for interventions in cases:
        nn, hf, tl = (r.logits(ids, *interventions) for r in runners)
        assert max_diff(nn, hf) <= 1e-5 and max_diff(nn, tl) <= 1e-5, interventions


def test_language_model_and_string_prompts():
    from nnsight import LanguageModel

    hf_model, tokenizer = hk.models.tiny("gemma3", attn_implementation="eager")
    model = LanguageModel(copy.deepcopy(hf_model), tokenizer=tokenizer)  # deprecated in 0.8, still supported
    interventions = [hk.zero_ablate("L1H0"), hk.mask_attention("L2H1", keys=[(1, 3)])]
    with model.trace("Tom eats apples . Tom eats"):
        hk_nn.apply(model, *interventions)
        logits = model.output.logits.save()
    ids = torch.tensor([tokenizer("Tom eats apples . Tom eats")["input_ids"]])
    assert max_diff(logits, hk.get_backend(hf_model).logits(ids, *interventions)) == 0.0
