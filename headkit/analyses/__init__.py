"""Analyses built on the sweep engine: each is a function returning a result that reports itself.

    montecarlo            many keep/ablate head masks per forward pass; samplers, streaming counts, regression
    stochastic_ablation   seed 003's study: importance, exclusion, outliers, effects, synergy (outcomes on disk)
    outcome_log           the study's crash-consistent outcome log
    gating                causal head gating (CHG): G, G+, G-, taxonomy, contrastive
    receivers             receiver heads: vertical scores, kurtosis
    suppression           sentence suppression: the KL matrix
    triad                 attention vs direct effect vs ablation effect per head (induction)
    induction             induction-head candidates: attention from the last token to the copied word
"""
