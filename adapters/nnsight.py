"""headkit inside nnsight 0.8 traces, locally and on NDIF (``remote=True``).

    import headkit as hk
    from headkit.adapters import nnsight as hk_nn

    ablate, cap = hk.zero_ablate("L5H1 L9H9"), hk.capture_attention("L9H9")   # build them outside the block
    with model.trace(prompt):                      # or model.trace(prompt, remote=True) for NDIF
        got = hk_nn.apply(model, ablate, cap)      # what the captures read (a Captures), saved
        logits = model.output.logits.save()
    got[cap].pattern(9, 9)                         # [batch, query, key], after a local or a remote run

``apply`` runs where the trace runs: in this process, or on the NDIF server. It touches modules in forward
order, layer by layer, so call it before reading modules it passes (or read those in an earlier trace):

- ``z`` (zero/mean-ablate, gate): the output projection's input, viewed as ``[batch, pos, head, d_head]``
  (per head, unlike nnsight's docs recipe that reshapes the attention output *after* W_O);
- ``scores`` (mask): the attention module's ``attention_mask`` becomes one additive ``[batch, head, q, k]``
  mask for the whole batch, -inf on masked cells (eager and sdpa honour it); a query left with no key
  has that head's output zeroed;
- ``pattern`` (capture): the attention weights the module returns, which only eager attention computes.

Per-invoke interventions: z edits inside ``tracer.invoke(...)`` see only that invoke's rows (per-row
gates then are ``[invoke_rows, layers, heads]``). Masks rewrite the whole batch's attention mask, so they
must be applied where the trace sees every row (a trace without invokes, or an empty ``tracer.invoke()``);
give per-row key masks ``[batch, pos]`` to mask differently per invoke.

Remote runs: :func:`register` (called by :func:`check_remote` and by a remote :class:`NNsightBackend`)
tells nnsight to ship headkit's kernel (``headkit.core``) and this module by value with each request
(NDIF does not have headkit installed); everything that runs in the trace imports only torch, nnsight and
the standard library, and nothing else of headkit travels. What comes back is plain data:
the Captures ``apply`` returns (bind it to a name in the block; it pickles as tensors and plain fields
and is rebuilt here, so ``got[cap]`` finds the capture by value), gradients only when ``.save()``d inside
the trace (see :func:`apply`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import nnsight
import torch

from headkit.core.adapter import AdapterBase, pad_id
from headkit.core.architectures import additive_mask, cached_tokens, check_maskable, find_cache, model_modules
from headkit.core.captures import Captures, Run
from headkit.core.errors import HeadkitError, fail
from headkit.core.inputs import check_inputs, real_token_positions
from headkit.core.interventions import Intervention, MaskAttention, apply_masks
from headkit.core.plan import plan

if TYPE_CHECKING:
    from jaxtyping import Bool, Int

__all__ = ["backend_for", "apply", "NNsightBackend", "check_remote", "register", "TRAVELS"]

TRAVELS = ("headkit.core", "headkit.adapters.nnsight")
"""What a remote request ships by value (NDIF does not install headkit): the kernel and this module."""


def register() -> None:
    """Ship headkit's kernel and this module by value with remote requests (NDIF does not install headkit).

    :func:`check_remote` and a remote :class:`NNsightBackend` call it; call it yourself before writing your
    own ``model.trace(..., remote=True)`` block without them. Nothing else of headkit travels: a block that
    names another part of headkit (say ``hk.zero_ablate`` inside it) fails on the server with "No module
    named 'headkit...'"; build the interventions before the block instead.

    Example:
        >>> from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES
        >>> from headkit.adapters import nnsight as hk_nn
        >>> hk_nn.register()
        >>> sorted(name for name in _PICKLE_BY_VALUE_MODULES if name.startswith("headkit"))
        ['headkit.adapters.nnsight', 'headkit.core']
    """
    for name in TRAVELS:
        nnsight.register(name)


def apply(model: Any, *interventions: Intervention) -> Captures:
    """Apply interventions inside an nnsight trace (or ``generate``); return what captures read, saved.

    Call it inside ``with model.trace(...)``. It validates every intervention against the model first
    and then edits modules in forward order. It returns a fresh :class:`~headkit.core.captures.Captures`
    marked with ``nnsight.save``: bind it (``got = hk_nn.apply(model, ablate, cap)``) and read
    ``got[cap].pattern(layer, head)`` after the block. A remote run sends it back as plain data (tensors,
    the captures' fields) and it is rebuilt here as the same type. The captures themselves never change.

    Gates stay differentiable. Locally, call ``loss.backward()`` after the trace as usual. Remotely the
    gate tensor travels as a copy, so run the backward inside the trace and save the gradient:
    ``loss.backward(); grad = gate_values.grad.save()``.

    Example:
        >>> import torch, headkit as hk
        >>> from nnsight import TransformersModel
        >>> from headkit.adapters import nnsight as hk_nn
        >>> hf_model, tokenizer = hk.models.tiny("llama", attn_implementation="eager")  # captures need eager
        >>> model = TransformersModel(hf_model, tokenizer=tokenizer)
        >>> ablate, cap = hk.zero_ablate("L1H2"), hk.capture_attention("L0H1")
        >>> with model.trace(torch.tensor([[1, 5, 6, 7]])):
        ...     got = hk_nn.apply(model, ablate, cap)
        ...     logits = model.output.logits.save()
        >>> logits.shape, got[cap].pattern(0, 1).shape
        (torch.Size([1, 4, 100]), torch.Size([1, 4, 4]))
    """
    worker = _worker()
    module = getattr(model, "_module", None)
    if not isinstance(module, torch.nn.Module):
        raise fail(
            f"nnsight.apply got a {type(model).__name__}",
            "the nnsight model the trace runs on (TransformersModel, LanguageModel or NNsight)",
            "pass the object you called .trace() on",
        )
    found = model_modules(module, "nnsight.apply")
    groups = plan(interventions, found.shape, "nnsight.apply")
    blocks = model
    for part in found.path.split("."):
        blocks = getattr(blocks, part)
    heads = (found.shape.n_heads, found.shape.d_head)
    got = Captures()
    for layer in sorted({layer for _, layer in groups}):
        attention = getattr(blocks[layer], found.arch.attention)
        masks = [iv for iv in groups.get(("scores", layer), ()) if isinstance(iv, MaskAttention)]
        readers = [iv for iv in groups.get(("pattern", layer), ()) if not isinstance(iv, MaskAttention)]
        edits = groups.get(("z", layer), [])
        dead = _mask(attention, masks, layer, found, module, worker) if masks else None
        if edits or dead is not None:
            where = found.where(layer, "z")
            out_proj = getattr(attention, found.arch.out_proj)
            x = out_proj.input  # [batch, pos, n_heads * d_head]
            z = x.unflatten(-1, heads)
            for iv in edits:
                if iv.reads_only:
                    got.put(iv, layer, iv.read("z", layer, z, where))
                else:
                    z = iv.edit("z", layer, z, where)
            if dead is not None:
                z = z.masked_fill(dead.transpose(1, 2)[..., None], 0)
            out_proj.input = z.flatten(-2)
        if readers:
            output = attention.output  # (attention output, weights, ...)
            weights = output[1]
            if weights is None:
                raise fail(
                    f"capture_attention found no attention weights at {found.where(layer, 'pattern')} "
                    f"(attention implementation {module.config._attn_implementation!r})",
                    "eager attention, the only implementation that returns weights",
                    'load the model with attn_implementation="eager" (TransformersModel(..., '
                    'attn_implementation="eager")), or call model._module.set_attn_implementation("eager")',
                )
            if dead is not None:
                weights = weights.masked_fill(dead[..., None], 0)
                attention.output = (output[0], weights, *output[2:])
            for iv in readers:
                got.put(iv, layer, iv.read("pattern", layer, weights, found.where(layer, "pattern")))
    return nnsight.save(got)


def _worker() -> Any:
    """The nnsight worker running this code, or HeadkitError when no trace is running."""
    from nnsight.intervention.interleaver import Mediator

    try:
        return Mediator.current("headkit.adapters.nnsight.apply")
    except ValueError:
        raise fail(
            "headkit.adapters.nnsight.apply was called outside a trace",
            "a call inside `with model.trace(...):` (or `model.generate(...)`)",
            "move the apply(...) line into the with block; for plain transformers models without nnsight "
            "use headkit.adapters.huggingface.applied",
        ) from None


def _mask(
    attention: Any, masks: list[MaskAttention], layer: int, found: Any, module: Any, worker: Any
) -> torch.Tensor:
    """Rewrite one layer's attention mask with -inf cells for the whole batch; return the dead rows."""
    where = found.where(layer, "scores")
    if worker.interleaver.batcher.batching and worker.batch_group is not None:
        raise fail(
            f"mask_attention at {where} was applied inside one of several invokes",
            "masks applied where the trace sees the whole batch (nnsight would apply one invoke's mask "
            "to every row, or fail)",
            "call hk_nn.apply for masks in an empty `tracer.invoke()` (or a trace without invokes), with "
            "per-row key masks [batch, pos] if rows need different masks",
        )
    check_maskable(module.config._attn_implementation, "mask_attention through nnsight")
    args, kwargs = attention.inputs
    hidden = args[0] if args else kwargs["hidden_states"]
    batch, q_len = hidden.shape[0], hidden.shape[1]
    base = kwargs.get("attention_mask")
    past = cached_tokens(find_cache(args, kwargs), layer)  # before this step's keys are added
    k_len = base.shape[-1] if base is not None else past + q_len
    mask = additive_mask(base, q_len, k_len, hidden.dtype, hidden.device)
    k_start = max(0, past + q_len - k_len)  # a sliding-window cache holds only the latest keys
    mask, dead = apply_masks(masks, layer, mask.expand(batch, found.shape.n_heads, q_len, k_len), where, k_start)
    kwargs = dict(kwargs)
    kwargs["attention_mask"] = mask
    attention.inputs = (args, kwargs)
    return dead


# ------------------------------------------------------------------------------------------------- backend
class NNsightBackend(AdapterBase):
    """The headkit backend for an nnsight model: each forward pass is one trace, local or remote.

    ``remote`` says where each trace runs: False (here), True (NDIF; checked first with
    :func:`check_remote`), "local" (nnsight's serialise-and-run-here simulation), or any nnsight
    ``Backend`` object (passed as ``backend=``, e.g. a stricter simulation). Remote failures come back as
    HeadkitError with the fix; the API key is never part of any message.

    Example:
        >>> import torch, headkit as hk
        >>> from nnsight import TransformersModel
        >>> hf_model, tokenizer = hk.models.tiny("gpt2")
        >>> backend = hk.get_backend(TransformersModel(hf_model, tokenizer=tokenizer))
        >>> backend.logits(torch.tensor([[1, 5, 6]]), hk.zero_ablate("L0H1")).shape
        torch.Size([1, 3, 100])
    """

    def __init__(self, model: Any, remote: Any = False) -> None:
        module = getattr(model, "_module", None)
        if not isinstance(module, torch.nn.Module) or not hasattr(model, "trace"):
            raise fail(
                f"NNsightBackend got a {type(model).__name__}",
                "an nnsight model (TransformersModel, LanguageModel or NNsight) wrapping a transformers model",
                "wrap the model: nnsight.TransformersModel(hf_model, tokenizer=tokenizer)",
            )
        self.model = model
        self.tokenizer = getattr(model, "tokenizer", None)
        self.shape = model_modules(module, "NNsightBackend").shape
        self.remote = remote
        if remote:
            register()
        unembed = module.get_output_embeddings()
        self.vocab_size = int(unembed.weight.shape[0])
        self._unembed_name = next(n for n, m in module.named_modules() if m is unembed)  # for logits(positions=)

    @property
    def torch_module(self) -> torch.nn.Module:
        return self.model._module

    def applied(self, *interventions: Intervention) -> Any:
        """Apply interventions to the wrapped module for a ``with`` block (local models only).

        Outside a trace nnsight runs the wrapped transformers module, so this is the transformers
        adapter's ``applied`` on it; remote models need :func:`apply` inside each trace instead.
        """
        if self.remote:
            raise fail(
                "NNsightBackend.applied was called on a remote backend",
                "a local model (code on NDIF runs only inside traces)",
                "call headkit.adapters.nnsight.apply(model, ...) inside each trace",
            )
        from headkit.adapters.huggingface import applied

        return applied(self.model._module, *interventions)  # yields the Captures, as there

    def run(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        *interventions: Intervention,
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
        last_only: bool = False,
        positions: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> Run:
        """One traced forward pass with interventions applied; returns its logits and what its captures read.

        The captures come back the same way after a remote run. With an ``attention_mask``,
        positions count real tokens only, as in the other backends. ``positions`` (bool ``[batch, pos]``)
        unembeds only its True cells and returns ``[n, vocab]`` (row-major), also remotely.
        """
        self.check(input_ids, attention_mask, "NNsightBackend.logits", last_only, positions)
        model, remote = self.model, self.remote
        kwargs: dict[str, Any] = {}
        if attention_mask is not None:
            kwargs.update(attention_mask=attention_mask, position_ids=real_token_positions(attention_mask))
        if last_only:
            kwargs["logits_to_keep"] = 1
        if remote is True:
            check_remote(model)
        if isinstance(remote, (bool, str)):
            kwargs["remote"] = remote
        else:
            kwargs["backend"] = remote
        unembed_name = self._unembed_name
        try:
            with model.trace(input_ids, **kwargs):
                captured = apply(model, *interventions)
                if positions is not None:
                    unembed = _envoy(model, unembed_name)
                    unembed.input = unembed.input[positions][None]
                logits = model.output.logits.save()
        except HeadkitError:
            raise
        except Exception as error:
            if not remote or not _is_transport_error(error):
                raise
            raise fail(
                f"the remote run failed: {_redact(f'{type(error).__name__}: {error}')}",
                "a reachable NDIF host serving this model, and a valid API key",
                "check nnsight.status() for served models and NDIF_API_KEY / nnsight.login() for the key, "
                "or run locally (remote=False)",
            ) from None
        return Run(logits if positions is None else logits[0], captured)

    def head_paths(self, input_ids: Int[torch.Tensor, "1 pos"], position: int, *interventions: Intervention) -> Any:
        """Every head's direct path to the logits at ``position`` (see :class:`headkit.core.adapter.HeadPaths`).

        Read during one local trace from the wrapped transformers module; a remote backend refuses, since
        W_O, the norms and the unembedding are read as weights here.
        """
        if self.remote:
            raise fail(
                "head_paths (the triad's direct effects) was called on a remote nnsight backend",
                "a local model: the direct path reads W_O, the norms and the unembedding as weights",
                "run it on a local copy (NNsightBackend(model, remote=False)); the ablation effects alone run "
                "remotely through montecarlo.evaluate",
            )
        from headkit.adapters.huggingface import head_paths

        return head_paths(self, self.model._module, input_ids, position, *interventions)

    def generate(
        self, input_ids: Int[torch.Tensor, "batch pos"], *interventions: Intervention, max_new_tokens: int = 20, **kwargs: Any
    ) -> Int[torch.Tensor, "batch total"]:
        """nnsight ``generate`` with interventions applied at every step (KV cache on), local or remote.

        ``kwargs`` go to ``generate``; greedy by default. Returns the token ids.
        """
        check_inputs(input_ids, kwargs.get("attention_mask"), self.vocab_size, "NNsightBackend.generate")
        model, remote = self.model, self.remote
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("pad_token_id", pad_id(model._module.config))
        if remote is True:
            check_remote(model)
        where = {"remote": remote} if isinstance(remote, (bool, str)) else {"backend": remote}
        with model.generate(input_ids, max_new_tokens=max_new_tokens, **kwargs, **where) as tracer:
            for _ in tracer.iter[:max_new_tokens]:  # one forward pass per new token
                apply(model, *interventions)
            tokens = tracer.result.save()
        return tokens

    def __repr__(self) -> str:
        return f"NNsightBackend({type(self.model).__name__}, remote={self.remote!r}, {self.shape})"


def check_remote(model: Any) -> None:
    """Check that a remote NDIF run can start: an API key is configured, NDIF answers, the model is served.

    ``model`` is an nnsight model or its Hub id (a string: check before building the model, whose
    constructor already needs the network). Raises HeadkitError naming what is missing and how to fix
    it; never prints or logs the key.

    Example:
        >>> from nnsight import CONFIG
        >>> from headkit.adapters import nnsight as hk_nn
        >>> saved, CONFIG.API.APIKEY = CONFIG.API.APIKEY, None
        >>> try:
        ...     hk_nn.check_remote("meta-llama/Llama-3.1-8B")
        ... except hk_nn.HeadkitError as error:
        ...     print(str(error).split(";")[0])
        no NDIF API key is configured
        >>> CONFIG.API.APIKEY = saved
    """
    from nnsight import CONFIG

    register()
    if not CONFIG.API.APIKEY:
        raise fail(
            "no NDIF API key is configured",
            "an API key from https://login.ndif.us",
            "set the NDIF_API_KEY environment variable or call nnsight.login() (the key is never printed)",
        )
    if isinstance(model, str):
        repo = model
    else:
        repo = getattr(getattr(getattr(model, "_module", None), "config", None), "_name_or_path", "") or ""
    if not repo:
        raise fail(
            "the model has no Hub repository id (its config has an empty name_or_path)",
            "a model NDIF serves, wrapped by its Hub id so the server knows which one to run",
            'wrap it by id: nnsight.TransformersModel("org/name") (weights are not downloaded for remote runs)',
        )
    import nnsight.ndif as ndif

    try:
        ndif._get("/status")
        running = ndif.is_model_running(repo)  # canonicalises the id through the Hub
    except Exception as error:
        raise fail(
            f"could not reach NDIF at {CONFIG.API.HOST}: {_redact(f'{type(error).__name__}: {error}')}",
            "a reachable NDIF host (and the Hub, to resolve the model id)",
            "check the network and NDIF_HOST, or run locally (remote=False)",
        ) from None
    if not running:
        raise fail(
            f"{repo!r} is not served on NDIF right now",
            "a model NDIF is running",
            "pick a served model (print(nnsight.status())) or run locally (remote=False)",
        )


def _envoy(model: Any, path: str) -> Any:
    """The envoy of the submodule at a dotted path (e.g. "lm_head")."""
    for part in path.split("."):
        model = getattr(model, part)
    return model


def _is_transport_error(error: BaseException) -> bool:
    """Errors of getting a request to NDIF and back, as opposed to errors in the traced code."""
    origin = type(error).__module__ or ""
    return isinstance(error, (ConnectionError, TimeoutError, OSError)) or origin.startswith(
        ("nnsight.intervention.backends", "httpx", "websocket", "huggingface_hub", "socketio", "engineio")
    )


def _redact(text: str) -> str:
    """The text with the configured NDIF API key blanked out."""
    from nnsight import CONFIG

    key = CONFIG.API.APIKEY
    return text.replace(key, "<NDIF_API_KEY>") if key else text


def backend_for(model: Any, tokenizer: Any = None) -> NNsightBackend | None:
    """The backend of an nnsight model (an envoy with ``trace``), or None for any other object.

    Example:
        >>> import headkit as hk
        >>> from nnsight import TransformersModel
        >>> from headkit.adapters import nnsight as hk_nn
        >>> model, tok = hk.models.tiny("gpt2")
        >>> type(hk_nn.backend_for(TransformersModel(model, tokenizer=tok))).__name__, hk_nn.backend_for(model)
        ('NNsightBackend', None)
    """
    from nnsight.intervention.envoy import Envoy

    return NNsightBackend(model) if isinstance(model, Envoy) and hasattr(model, "trace") else None
