"""Analyses built on the sweep engine: each is a function returning a result that reports itself.

    montecarlo            many keep/ablate head masks per forward pass; samplers, streaming counts, regression
    estimators            mask designs (antithetic, balanced) and effect estimators (ridge, logistic, Shapley)
    stochastic_ablation   seed 003's study: importance, exclusion, outliers, effects, synergy (outcomes on disk)
    outcome_log           the study's crash-consistent outcome log
    gating                causal head gating (CHG): G, G+, G-, taxonomy, contrastive
    receivers             receiver heads: vertical scores, kurtosis
    suppression           sentence suppression: the KL matrix
    triad                 attention vs direct effect vs ablation effect per head (induction)
    induction             induction-head candidates: attention from the last token to the copied word
    rollouts              sampled continuations under per-row head gates, one random stream per row
    resampling            seed 000's rollouts: every sentence resampled under every condition, on disk, resumable
    importance            Thought Anchors' resampling and counterfactual importance (the authors' definitions)
    embeddings            sentence embeddings (all-MiniLM-L6-v2 offline, or the model's own), each sentence once
    counterfactual        seed 000's study: none / receiver heads / random heads ablated, tables and figures
"""
