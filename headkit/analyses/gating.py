"""Causal head gating (CHG, Nam et al. 2025): learn one gate per head, then read each head's causal role.

A gate ``G = sigmoid(logit)`` scales each head's output. It is fitted by next-token likelihood on target
tokens only, with a small clipped regulariser ``lam * mean(clamp(logit, -4, 4))`` that pushes gates the
task does not care about towards 1 (``G+``, ``lam > 0``) or towards 0 (``G-``, ``lam < 0``), both started
from a fit without it (``G``). Then, per head (Table 1 of the paper):

- facilitation ``F = G-``: the head stays on even when pushed off;
- interference ``N = 1 - G+``: the head is turned off even when pushed on;
- irrelevance ``I = G+ * (1 - G-)``: the head follows the push either way.

The recipe is the paper's (appendix 6.2): uniform(0, 1) initial gates; ``G``: 500 Adam steps, learning
rate 0.1 -> 0.01 (linear), ``lam = 0``; ``G+`` and ``G-``: 500 steps each from ``G``, 0.5 -> 0.1,
``lam = +-0.1``; batch 64; gradient norm clipped at 1. Loss: the mean over a batch of each sequence's mean
target-token NLL, minus the regulariser (a mean over heads, as in the authors' code).

Unlike the reference code, ``G+`` and ``G-`` are fitted together as rows of one batch, and many seeds are
fitted in one run, each batch row carrying its own gate vector. Fits are not coupled: each fit's loss is
its own (summed, never averaged, across fits), gradient norms are clipped per fit, and each seed draws
its own initial gates and minibatches, so a seed fitted among others equals the same seed fitted alone.
Logits are computed at target positions only; model weights may be bf16 while the gate logits stay fp32.

This module fits; the recipe is in :mod:`~headkit.analyses.gate_recipes`, the results in
:mod:`~headkit.analyses.gate_fits`, scoring and the checks of a fit (``sequence_logprob``,
``ablation_curves``, ``variant_logprobs``, importable from here too) in :mod:`~headkit.analyses.gate_scores`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from headkit.analyses.gate_fits import SCORES, ContrastiveFit, GateFit, _history_frame
from headkit.analyses.gate_recipes import ContrastiveRecipe, Recipe
from headkit.analyses.gate_scores import (
    _backend,
    _prompts,
    _readout,
    ablation_curves,
    sequence_logprob,
    variant_logprobs,
)
from headkit.backend import Backend
from headkit.config import configure
from headkit.core.architectures import NORMALISED_ATTENTION_OUTPUT
from headkit.core.errors import fail
from headkit.core.interventions import gate
from headkit.prompts import Prompts
from headkit.shards import World, world
from headkit.sweep import Rows, RowSizer, Variants, sweep

if TYPE_CHECKING:
    from jaxtyping import Int

__all__ = [
    "GateFit",
    "ContrastiveFit",
    "fit",
    "fit_contrastive",
    "Recipe",
    "ContrastiveRecipe",
    "sequence_logprob",
    "ablation_curves",
    "variant_logprobs",
    "SCORES",
]





# ------------------------------------------------------------------------------------------------- fitting
def fit(
    model: Any,
    data: Any,
    *,
    seeds: int | Sequence[int] = 1,
    recipe: Recipe | None = None,
    rows_per_pass: int | None = None,
    tokenizer: Any = None,
    progress: bool = True,
    **changes: Any,
) -> GateFit:
    """Fit causal head gates ``G`` (``lam = 0``), then ``G+`` and ``G-`` (``+lam`` / ``-lam``) from it.

    ``recipe`` (default: the paper's, :class:`Recipe`) says how; keyword ``changes`` replace its fields
    (``fit(model, data, steps=100)``). ``seeds`` is a count (seeds 0..n-1) or a list of seeds; all are
    fitted in one batched run. ``data``
    is anything :func:`headkit.prompts.tokenize` takes (pairs, records, a ``datasets.Dataset``) or
    :class:`~headkit.prompts.Prompts`. ``rows_per_pass`` is the rows of one forward pass (None: a step's
    whole batch); a smaller size processes the batch in pieces and sums the gradients: the same result. Model weights are frozen for
    the run and restored after.

    In a torch.distributed process group (e.g. under ``torchrun``) each rank fits a contiguous part of the
    seeds and every rank returns all of them; each seed's fit is its own, so the gates equal a one-process
    run's to floating-point rounding (the rows beside a seed's in a pass differ).

    Example:
        >>> import headkit as hk
        >>> from headkit import gating
        >>> model, tok = hk.models.tiny("llama")
        >>> data = [("Tom eats apples . Tom eats", " apples"), ("He bought milk . He bought", " milk")]
        >>> result = gating.fit(model, data, seeds=3, steps=5, reg_steps=5, batch_size=2, tokenizer=tok, progress=False)
        >>> result.G_plus.shape, result.taxonomy().shape[0]
        (torch.Size([3, 2, 4]), 8)
    """
    seed_list = _seeds(seeds, "fit")
    how = configure(Recipe, recipe, changes, "fit")
    _check_rows_per_pass(rows_per_pass, "fit")
    lam = how.lam
    backend = _backend(model, tokenizer, "fit")
    ex = _prompts(backend, data, "fit")
    _warn_normalised_attention_output(backend)
    here = world()

    def fit_seeds(seeds: list[int]) -> tuple[list[torch.Tensor], list[tuple[str, int, int, str, float]]]:
        theta, samplers = _start(backend, seeds, len(ex))
        device, dtype = theta.device, theta.dtype
        k = len(seeds)
        history: list[tuple[str, int, int, str, float]] = []
        with backend.frozen():
            _optimise(
                backend, ex, theta, samplers, seed_of_fit=list(range(k)), lam=torch.zeros(k, dtype=dtype, device=device),
                steps=how.steps, lr=how.lr, recipe=how, rows_per_pass=rows_per_pass,
                progress=progress and here.first, desc="CHG G  (lam=0)", log=lambda step, nll: history.extend(
                    ("G", step, seeds[i], "G", v) for i, v in enumerate(nll)),
            )
            G = torch.sigmoid(theta.detach()).cpu()
            both = theta.detach().repeat_interleave(2, 0).clone().requires_grad_(True)  # rows: s0+, s0-, s1+, ...
            signs = torch.tensor([lam, -lam] * k, dtype=dtype, device=device)
            _optimise(
                backend, ex, both, samplers, seed_of_fit=[i // 2 for i in range(2 * k)], lam=signs,
                steps=how.reg_steps, lr=how.reg_lr, recipe=how, rows_per_pass=rows_per_pass,
                progress=progress and here.first, desc=f"CHG G+ G- (lam=+-{lam:g})", log=lambda step, nll: history.extend(
                    ("G+-", step, seeds[i // 2], "G+" if i % 2 == 0 else "G-", v) for i, v in enumerate(nll)),
            )
        gates = torch.sigmoid(both.detach()).cpu()
        return [G, gates[0::2], gates[1::2]], history

    (G, G_plus, G_minus), history = _over_ranks(here, seed_list, fit_seeds)
    used = {**asdict(how), "examples": len(ex)}
    return GateFit(G, G_plus, G_minus, tuple(seed_list), _history_frame(history), used)


def fit_contrastive(
    model: Any,
    retain: Any,
    forget: Any,
    *,
    seeds: int | Sequence[int] = 1,
    recipe: ContrastiveRecipe | None = None,
    rows_per_pass: int | None = None,
    tokenizer: Any = None,
    progress: bool = True,
    **changes: Any,
) -> ContrastiveFit:
    """Contrastive CHG (equation 2): gates that keep the ``retain`` variant working and break ``forget``.

    ``retain`` and ``forget`` are matched: example i of each is the same item in two formats. Loss per
    pair: ``-logp_R + clamp(logp_F - stopgrad(logp_R), min=-max_diff)``, averaged over the batch, minus
    ``lam * mean(clamp(logit, -clip, clip))``; ``lam > 0`` pushes gates to 1, so only heads the forgetting
    needs are turned off. This follows the authors' code and the paper's equation 2 (appendix 6.2 writes
    ``lam = -0.1``; the code and equation use +0.1). One stage from uniform(0, 1) gates, Adam, 0.1 -> 0.01.
    Both variants of a pair run in the same forward pass, under the same gates. ``recipe`` (default:
    :class:`ContrastiveRecipe`) and keyword ``changes`` of its fields say how.

    Example:
        >>> import headkit as hk
        >>> from headkit import gating
        >>> model, tok = hk.models.tiny("llama")
        >>> keep, drop = [("Tom eats", " apples")], [("He bought", " milk")]
        >>> gating.fit_contrastive(model, keep, drop, steps=3, batch_size=1, tokenizer=tok, progress=False).G.shape
        torch.Size([1, 2, 4])
    """
    seed_list = _seeds(seeds, "fit_contrastive")
    how = configure(ContrastiveRecipe, recipe, changes, "fit_contrastive")
    _check_rows_per_pass(rows_per_pass, "fit_contrastive")
    lam = how.lam
    backend = _backend(model, tokenizer, "fit_contrastive")
    ex_r = _prompts(backend, retain, "fit_contrastive (retain)")
    ex_f = _prompts(backend, forget, "fit_contrastive (forget)")
    if len(ex_r) != len(ex_f):
        raise fail(
            f"fit_contrastive got {len(ex_r)} retain examples and {len(ex_f)} forget examples",
            "matched pairs: example i of each is the same item in the two variants",
            "pass lists of equal length, aligned item by item",
        )
    both = ex_r.concat(ex_f)  # rows 0..n-1 retain, n..2n-1 forget
    n = len(ex_r)
    here = world()

    def fit_seeds(seeds: list[int]) -> tuple[list[torch.Tensor], list[tuple[str, int, int, str, float]]]:
        theta, samplers = _start(backend, seeds, n)
        history: list[tuple[str, int, int, str, float]] = []
        with backend.frozen():
            _optimise(
                backend, both, theta, samplers, seed_of_fit=list(range(len(seeds))),
                lam=torch.full((len(seeds),), float(lam), dtype=theta.dtype, device=theta.device), steps=how.steps,
                lr=how.lr, recipe=how, rows_per_pass=rows_per_pass, progress=progress and here.first,
                desc=f"contrastive CHG (lam={lam:g})", pair_offset=n,
                log=lambda step, nll: history.extend(("C", step, seeds[i], "G", v) for i, v in enumerate(nll)),
            )
        return [torch.sigmoid(theta.detach()).cpu()], history

    (G,), history = _over_ranks(here, seed_list, fit_seeds)
    used = {**asdict(how), "examples": n}
    return ContrastiveFit(G, tuple(seed_list), _history_frame(history), used)


def _over_ranks(
    here: World,
    seeds: list[int],
    fit_seeds: Callable[[list[int]], tuple[list[torch.Tensor], list[tuple[str, int, int, str, float]]]],
) -> tuple[list[torch.Tensor], list[tuple[str, int, int, str, float]]]:
    """Fit each rank's part of the seeds (all of them in one process) and gather every rank's gates, in seed
    order, and history, in the order one process logs it (stage, step, seed, fit)."""
    part = here.part(len(seeds))
    mine = seeds[part.start : part.stop]
    gates, history = fit_seeds(mine) if mine else ([], [])  # more ranks than seeds: some have none
    if here.size == 1:
        return gates, history
    gathered = here.gather((gates, history))
    parts = [g for g, _ in gathered if g]
    merged = [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]
    position = {seed: i for i, seed in enumerate(seeds)}
    rows = sorted((r for _, h in gathered for r in h), key=lambda r: (r[0], r[1], position[r[2]], r[3]))
    return merged, rows


def _optimise(
    backend: Backend,
    ex: Prompts,
    theta: torch.Tensor,
    samplers: list[_Sampler],
    *,
    seed_of_fit: list[int],
    lam: torch.Tensor,
    steps: int,
    lr: tuple[float, float],
    recipe: Recipe | ContrastiveRecipe,
    rows_per_pass: int | None,
    progress: bool,
    desc: str,
    log: Callable[[int, list[float]], None],
    pair_offset: int | None = None,
) -> None:
    """Adam on ``theta [fit, layer, head]``; each fit's loss is its own and its gradient is clipped alone.

    Each step, every seed draws ``batch_size`` examples from its own sampler; every fit of that seed is
    evaluated on them. With ``pair_offset`` (contrastive), example i is retained and ``i + pair_offset``
    forgotten, in the same forward pass.
    """
    if steps == 0:
        return
    from tqdm.auto import tqdm

    batch_size, clip, grad_norm = recipe.batch_size, recipe.clip, recipe.grad_norm
    max_diff = float(getattr(recipe, "max_diff", 5.0))

    optimiser = torch.optim.Adam([theta], lr=lr[0])
    readout = _readout(ex)
    fit_device = theta.device
    variants = Variants(theta.shape[0], lambda fit, prompt: (gate(torch.sigmoid(theta[fit.to(fit_device)])),))
    per_step = theta.shape[0] * batch_size * (1 if pair_offset is None else 2)
    # None: a step's whole batch in one pass (the reference's recipe; tuning from one row would cost the first
    # steps many small passes, and their gradients are summed either way)
    sizer = RowSizer(per_step if rows_per_pass is None else rows_per_pass, per_step, "fit", step=1 if pair_offset is None else 2)
    schedule = torch.optim.lr_scheduler.LinearLR(optimiser, 1.0, lr[1] / lr[0], total_iters=steps)
    n_fits = theta.shape[0]
    fit_ids = torch.tensor(seed_of_fit)
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        optimiser.zero_grad(set_to_none=False)
        drawn = torch.stack([s.take(batch_size) for s in samplers])  # [seed, batch]
        example = drawn[fit_ids].flatten()  # one unit per (fit, batch item), grouped by fit
        fit_of_unit = torch.arange(n_fits).repeat_interleave(batch_size)
        regulariser = -(lam * theta.clamp(-clip, clip).mean((1, 2))).sum()
        regulariser.backward()
        logp = torch.empty(len(example), dtype=torch.float64)  # the (retained) target log-prob of each unit
        if pair_offset is None:
            rows = Rows(fit_of_unit, example)
        else:  # contrastive: the retain row and the forget row of each pair share a pass
            rows = Rows(fit_of_unit.repeat_interleave(2), torch.stack([example, example + pair_offset], 1).flatten(), 2)
        done = 0
        for lp in sweep(backend, ex.right.input_ids, ex.right.attention_mask, readout, variants, rows, rows_per_pass=sizer,
                        grad=True):
            if pair_offset is None:
                keep, loss = lp, -lp.sum() / batch_size
            else:
                keep, lose = lp[0::2], lp[1::2]
                loss = ((lose - keep.detach()).clamp(min=-max_diff) - keep).sum() / batch_size
            loss.backward()
            logp[done : done + len(keep)] = keep.detach().double().cpu()
            done += len(keep)
        _clip_per_fit(theta.grad, grad_norm)
        optimiser.step()
        schedule.step()
        per_fit = -logp.reshape(n_fits, batch_size).mean(1)  # NLL (retain NLL if contrastive)
        log(step, per_fit.tolist())
        bar.set_postfix(nll=f"{per_fit.mean().item():.3f}")


def _clip_per_fit(grad: torch.Tensor, max_norm: float) -> None:
    """``clip_grad_norm_`` applied to each fit's gradient on its own (the reference clips all fits jointly)."""
    norms = grad.flatten(1).norm(dim=1)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    grad.mul_(scale[:, None, None])


class _Sampler:
    """Minibatches drawn without replacement from a reshuffled order, from one seed's generator."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator, self.queue = n, generator, torch.empty(0, dtype=torch.long)

    def take(self, k: int) -> Int[torch.Tensor, " k"]:
        while len(self.queue) < k:
            self.queue = torch.cat([self.queue, torch.randperm(self.n, generator=self.generator)])
        out, self.queue = self.queue[:k], self.queue[k:]
        return out


def _start(backend: Backend, seeds: list[int], n_examples: int) -> tuple[torch.Tensor, list[_Sampler]]:
    """Each seed's uniform(0, 1) initial gates as logits ``[seed, layer, head]`` (a leaf needing gradients),
    and its minibatch sampler; both come from that seed's own generator, in that order."""
    shape = backend.shape
    device, dtype = backend.device, torch.promote_types(backend.dtype, torch.float32)  # fp32 gates over bf16 weights
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    u = torch.stack([torch.rand(shape.n_layers, shape.n_heads, generator=g, dtype=torch.float64) for g in generators])
    u = u.clamp(1e-6, 1 - 1e-6)
    theta = torch.log(u / (1 - u)).to(device=device, dtype=dtype).requires_grad_(True)
    return theta, [_Sampler(n_examples, g) for g in generators]


# ------------------------------------------------------------------------------------------------- helpers
def _seeds(seeds: int | Sequence[int], owner: str) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise fail(f"{owner} got seeds={seeds}", "a positive count or a list of seeds", "pass seeds=10")
        return list(range(seeds))
    out = list(seeds) if isinstance(seeds, Sequence) and not isinstance(seeds, str) else None
    if not out or not all(isinstance(s, int) and not isinstance(s, bool) for s in out) or len(set(out)) != len(out):
        raise fail(f"{owner} got seeds={seeds!r}", "a positive count or a list of distinct ints", "pass seeds=[0, 1, 2]")
    return out


def _check_rows_per_pass(m: Any, owner: str) -> None:
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 2):
        raise fail(f"{owner} got rows_per_pass={m!r}", "None (a step's whole batch per pass) or at least 2 rows per pass",
                   "pass rows_per_pass=256")


def _warn_normalised_attention_output(backend: Backend) -> None:
    kind = backend.model_type
    if kind in NORMALISED_ATTENTION_OUTPUT:
        warnings.warn(
            f"{kind} RMS-normalises each layer's attention output, so scaling all heads of a layer alike is "
            "undone by the norm: G- can push whole layers towards 0 at no cost and facilitation scores come out "
            "compressed (rank heads by them; compare thresholds such as 0.5 with care). Zero-ablation, and so "
            "ablation_curves, stay exact.",
            UserWarning,
            stacklevel=3,
        )
