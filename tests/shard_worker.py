"""One process of a sharded run (under torchrun) or a run alone: Monte Carlo, the study, CHG and suppression
on a tiny model; rank 0 saves what it got for tests/test_shards.py to compare.

    python -m torch.distributed.run --nproc-per-node 2 tests/shard_worker.py OUT.pt STUDY_DIR N_MASKS [WHAT]
    python tests/shard_worker.py OUT.pt STUDY_DIR N_MASKS [WHAT]          # the same alone

WHAT is "all" (default) or "study" (only the logged study, for resume tests).
"""

from __future__ import annotations

import os
import sys

import torch

import headkit as hk
from headkit import gating, montecarlo, stochastic_ablation

PROMPTS = ["Tom eats apples . Tom eats", "Sarah wears hats . Sarah", "Alice reads books . Alice reads",
           "Bob drinks tea . Bob drinks"]
TEXT = ("the cat eats fish . the dog eats meat . Tom reads books . Sarah wears hats . "
        "Alice drinks tea . Bob plays games .")


def main(out: str, study_dir: str, n_masks: int, what: str = "all") -> None:
    if "WORLD_SIZE" in os.environ:
        torch.distributed.init_process_group("gloo")
    model, tok = hk.models.tiny("llama")
    backend = hk.get_backend(model, tok)
    targets = torch.stack([backend.logits(tok(p, return_tensors="pt").input_ids)[0, -1].argmax() for p in PROMPTS])
    got: dict[str, object] = {}
    result = stochastic_ablation.study(model, PROMPTS, targets, tokenizer=tok, n_masks=n_masks, n_boot=5,
                                       rows_per_pass=8, path=study_dir, progress=False)
    got["study_margins"] = {name: phase.margins for name, phase in result.phases.items()}
    got["study_scores"] = result.scores
    got["evaluations"] = result.evaluations
    if what == "all":
        masks = montecarlo.bernoulli(23, 0.5, 2, 4, seed=1)
        got["mc"] = montecarlo.evaluate(model, PROMPTS, targets, masks, metric="margin", tokenizer=tok,
                                        rows_per_pass=8, progress=False)
        got["mc_tuned"] = montecarlo.evaluate(model, PROMPTS, targets, masks, metric="margin", tokenizer=tok,
                                              progress=False)
        data = [(p, tok.decode([t])) for p, t in zip(PROMPTS, targets.tolist())]
        fitted = gating.fit(model, data, seeds=3, steps=3, reg_steps=3, batch_size=2, tokenizer=tok, progress=False)
        got["chg"] = (fitted.G, fitted.G_plus, fitted.G_minus, fitted.seeds, fitted.history)
        contrast = gating.fit_contrastive(model, data[:2], data[2:], seeds=[5, 2, 7], steps=2, batch_size=1,
                                          tokenizer=tok, progress=False)
        got["contrastive"] = (contrast.G, contrast.seeds, contrast.history)
        sentences = hk.sentences.locate(tok, TEXT)
        got["suppression"] = hk.suppression.kl_matrix(model, sentences, rows_per_pass=2, progress=False).token_kl
    got["world"] = hk.shards.world().size
    if hk.shards.world().first:
        torch.save(got, out)
    if "WORLD_SIZE" in os.environ:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *(sys.argv[4:5]))
