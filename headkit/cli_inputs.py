"""What the ``headkit`` command reads from its user, checked before any model loads.

    read_pairs(path)       prompt<TAB>target lines of a text file
    read_prompts(path)     the same for mc's --prompts: None without a file, refused when it holds none
    read_texts(paths)      UTF-8 text files (default: the built-in reasoning traces)
    out_folder(path)       an output folder, refusing a path that is a file
    device(name)           a torch device string that exists here
    p_keep(text), masks(n) mc's --p-keep and --masks
    open_model(...)        --model (a folder, a .gguf file, a model object, or the embedded default) for --adapter

Each raises :class:`headkit.HeadkitError` naming the flag, what was expected and a fix, so the command
exits with one line instead of a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch

from headkit.core.errors import HeadkitError

__all__ = ["read_pairs", "read_prompts", "read_texts", "out_folder", "device", "p_keep", "masks", "open_model", "ADAPTERS"]


def read_pairs(path: str) -> tuple[list[str], list[str]]:
    """The prompts and targets of a text file of ``prompt<TAB>target`` lines (blank lines skipped).

    Example:
        >>> import tempfile, os
        >>> from headkit.cli_inputs import read_pairs
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "p.tsv")
        ...     _ = open(path, "w").write("Tom eats apples . Tom eats\\t apples\\n\\n")
        ...     read_pairs(path)
        (['Tom eats apples . Tom eats'], [' apples'])
    """
    pairs = []
    for number, line in enumerate(read_texts([path])[0].splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise HeadkitError(
                f"--prompts {path}: line {number} ({line[:60]!r}) is not 'prompt<TAB>target'; expected one prompt, "
                "a tab and its target per line. Fix: separate them with a tab (the target keeps its leading space)"
            )
        pairs.append((parts[0], parts[1]))
    return [p for p, _ in pairs], [t for _, t in pairs]


def read_prompts(path: str | None) -> tuple[list[str] | None, list[str] | None]:
    """The prompts and targets of ``--prompts`` (:func:`read_pairs`), ``(None, None)`` without a file.

    Example:
        >>> import tempfile
        >>> from headkit.cli_inputs import read_prompts
        >>> read_prompts(None)
        (None, None)
        >>> with tempfile.NamedTemporaryFile("w", suffix=".tsv") as empty:
        ...     try:
        ...         read_prompts(empty.name)
        ...     except ValueError as error:
        ...         print("holds no prompt<TAB>target lines" in str(error))
        True
    """
    if not path:
        return None, None
    texts, targets = read_pairs(path)
    if not texts:
        raise HeadkitError(f"--prompts {path!r} holds no prompt<TAB>target lines; expected at least one. "
                           "Fix: write one prompt, a tab and its target per line")
    return texts, targets


def read_texts(paths: Sequence[str]) -> list[str]:
    """The contents of UTF-8 text files; no paths gives the built-in reasoning traces.

    Example:
        >>> from headkit.cli_inputs import read_texts
        >>> from headkit.data import reasoning_traces
        >>> read_texts([]) == reasoning_traces()
        True
        >>> try:
        ...     read_texts(["/nonexistent/trace.txt"])
        ... except ValueError as error:
        ...     print(str(error).split(" (")[0])
        could not read text file '/nonexistent/trace.txt'
    """
    from headkit.data import reasoning_traces

    if not paths:
        return reasoning_traces()
    texts = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except OSError as error:
            raise HeadkitError(
                f"could not read text file {path!r} ({error.strerror}); expected a readable UTF-8 text file. "
                "Fix: check the path"
            ) from None
        except UnicodeDecodeError as error:
            raise HeadkitError(
                f"text file {path!r} is not UTF-8 (byte {error.start}: {error.reason}); expected a UTF-8 text file. "
                f"Fix: convert it, e.g. iconv -f latin1 -t utf-8 {path} > fixed.txt"
            ) from None
    return texts


def read_problem(path: str | None) -> Any:
    """A problem for ``headkit counterfactual`` from a JSON file; None gives the built-in one.

    The file holds ``prompt`` (the text before the chain of thought), the chain of thought as ``sentences``
    (a list) or ``chain_of_thought`` (a text, split by :func:`headkit.sentences.split`), ``answer`` and,
    optionally, ``categories`` (one label per sentence).

    Example:
        >>> import json, tempfile
        >>> from headkit.cli_inputs import read_problem
        >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        ...     json.dump({"prompt": "Q: 2+3?", "chain_of_thought": "2 plus 3 is 5. So 5.", "answer": "5"}, f)
        >>> read_problem(f.name).sentences
        ('2 plus 3 is 5.', 'So 5.')
    """
    from headkit.analyses.resampling import Problem
    from headkit.data import counterfactual_problem
    from headkit.sentences import split

    if path is None:
        return counterfactual_problem()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as error:
        raise HeadkitError(f"could not read problem file {path!r} ({error.strerror}); expected a readable JSON "
                           "file. Fix: check the path") from None
    except ValueError as error:
        raise HeadkitError(f"problem file {path!r} is not JSON ({error}); expected an object with prompt, "
                           "sentences or chain_of_thought, answer. Fix: write it with json.dump") from None
    known = {"prompt", "sentences", "chain_of_thought", "answer", "categories"}
    if not isinstance(data, dict) or not {"prompt", "answer"} <= set(data) or \
            ("sentences" in data) == ("chain_of_thought" in data) or set(data) - known:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise HeadkitError(f"problem file {path!r} holds {got}; expected the keys prompt, answer, one of sentences "
                           "(a list) or chain_of_thought (a text), and optionally categories. Fix: rename or add "
                           "the keys (unknown ones are refused, so a typo is not ignored)")
    sentences = data.get("sentences")
    if sentences is not None and (not isinstance(sentences, list) or not all(isinstance(x, str) for x in sentences)):
        raise HeadkitError(f"problem file {path!r} has sentences of type {type(sentences).__name__}; expected a list "
                           "of strings. Fix: pass a list, or the whole text as chain_of_thought")
    if sentences is None:
        sentences = split(str(data["chain_of_thought"]))
    return Problem(str(data["prompt"]), sentences, str(data["answer"]), categories=data.get("categories"))


def out_folder(path: str, flag: str = "--out") -> str:
    """The output folder, refusing a path that is a file (before any work is done); it need not exist yet.

    Example:
        >>> import tempfile
        >>> from headkit.cli_inputs import out_folder
        >>> out_folder("not_made_yet_out")
        'not_made_yet_out'
        >>> with tempfile.NamedTemporaryFile(suffix=".txt") as taken:
        ...     try:
        ...         out_folder(taken.name)
        ...     except ValueError as error:
        ...         print("is a file" in str(error))
        True
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise HeadkitError(f"{flag} {path!r} is a file; expected a folder for the outputs (created if missing). "
                           f"Fix: pass a folder path, e.g. {flag} {os.path.splitext(path)[0] or 'out'}_dir")
    return path


def device(name: str | None) -> str:
    """A torch device string that exists here (None: cuda when available, else cpu), or a HeadkitError.

    Example:
        >>> from headkit.cli_inputs import device
        >>> device("cpu")
        'cpu'
        >>> try:
        ...     device("nonsense")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        --device 'nonsense' is not a torch device
    """
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError):
        raise HeadkitError(f"--device {name!r} is not a torch device; expected cpu, cuda, cuda:N or mps. "
                           "Fix: pass --device cpu (or leave it out for cuda when available)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise HeadkitError(f"--device {name!r}, but this torch sees no CUDA device (torch {torch.__version__}); "
                           "expected a visible GPU. Fix: pass --device cpu, or install a CUDA build of torch")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise HeadkitError(f"--device {name!r}, but only {torch.cuda.device_count()} CUDA devices are visible; "
                           "expected an index below that. Fix: pass --device cuda:0")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise HeadkitError(f"--device {name!r}, but MPS is not available here; expected an Apple GPU. "
                           "Fix: pass --device cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise HeadkitError(f"--device {name!r} is not supported; expected cpu, cuda or mps. Fix: pass --device cpu")
    return name


def p_keep(value: str | tuple[float, float]) -> str | tuple[float, float]:
    """``--p-keep``: ``"auto"`` or two keep probabilities in (0, 1] from ``"0.3,0.85"`` (a tuple passes through).

    Example:
        >>> from headkit.cli_inputs import p_keep
        >>> p_keep("auto"), p_keep("0.3,0.85")
        ('auto', (0.3, 0.85))
    """
    if isinstance(value, str) and value != "auto":
        try:
            value = tuple(float(p) for p in value.split(","))  # type: ignore[assignment]
        except ValueError:
            raise HeadkitError(f'mc got --p-keep {value!r}; expected "auto" or two numbers like "0.3,0.85". '
                               'Fix: pass --p-keep 0.3,0.85') from None
        if len(value) != 2 or not all(0 < p <= 1 for p in value):
            raise HeadkitError(f"mc got --p-keep {','.join(map(str, value))}; expected two keep probabilities "
                               "in (0, 1]. Fix: pass --p-keep 0.3,0.85 (many ablated, few ablated)")
    return value


def masks(value: int | None) -> int | None:
    """``--masks``: None (the command's default) or a whole number of at least 2.

    Example:
        >>> from headkit.cli_inputs import masks
        >>> masks(None), masks(100)
        (None, 100)
        >>> try:
        ...     masks(1)
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        mc got --masks 1
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
        raise HeadkitError(f"mc got --masks {value!r}; expected at least 2 masks per phase. "
                           "Fix: pass --masks 100 (the seed: 10000)")
    return value


_check_device = device  # open_model's parameter of that name shadows the function


ADAPTERS = ("transformers", "huggingface", "transformer_lens", "nnsight")
"""``--adapter`` values (``huggingface`` is the older name of ``transformers``)."""


def open_model(
    model: Any = None,
    tokenizer: Any = None,
    *,
    adapter: str = "transformers",
    device: str | None = None,
    dtype: str = "float32",
    attn_implementation: str | None = None,
) -> tuple[Any, Any, str]:
    """The model a command runs on, its tokenizer and a name to print: ``--model`` and the options beside it.

    ``model`` is a model object (used as given), a local folder or ``.gguf`` file (:func:`headkit.models.load`),
    or None for the embedded default; a loaded model is wrapped for ``adapter`` (a TransformerLens
    bridge, an nnsight ``TransformersModel``). Flags are checked before anything loads.

    Example:
        >>> import headkit as hk
        >>> from headkit.cli_inputs import open_model
        >>> model, tok = hk.models.tiny("llama")
        >>> open_model(model, tok)[2]
        'LlamaForCausalLM'
        >>> try:
        ...     open_model("/nowhere/model", adapter="nnsight")
        ... except ValueError as error:
        ...     print(str(error).split(";")[0])
        --model '/nowhere/model' does not exist
    """
    from headkit.models import DEFAULT_MODEL, dtype_of, load

    if adapter not in ADAPTERS:
        raise HeadkitError(f"--adapter {adapter!r}; expected one of {', '.join(ADAPTERS)}. Fix: pass --adapter transformers")
    dtype_of(dtype)  # checked here too for a model object, which is used as given
    if attn_implementation not in (None, "sdpa", "eager"):
        raise HeadkitError(f"--attn-implementation {attn_implementation!r}; expected sdpa or eager. "
                           "Fix: pass --attn-implementation eager (captures through nnsight need it)")
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model, tokenizer, type(model).__name__
    where = _check_device(device)
    name = DEFAULT_MODEL if model is None else os.fspath(model)
    loaded, tokenizer = load(model, dtype=dtype, device=where, attn_implementation=attn_implementation)  # type: ignore[arg-type]
    if adapter == "transformer_lens":
        return _bridge(loaded, tokenizer, os.path.basename(os.path.normpath(name)) if model else "gemma-3-270m", where), \
            tokenizer, name
    if adapter == "nnsight":
        try:
            from nnsight import TransformersModel
        except ImportError:
            raise HeadkitError("--adapter nnsight found no nnsight; expected nnsight 0.8. "
                               "Fix: pip install 'headkit[nnsight]', or drop --adapter") from None
        return TransformersModel(loaded, tokenizer=tokenizer), tokenizer, name
    return loaded, tokenizer, name


def _bridge(model: Any, tokenizer: Any, name: str = "gemma-3-270m", where: str = "cpu") -> Any:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        raise HeadkitError(
            "--adapter transformer_lens found no transformer_lens.model_bridge (TransformerLens is not installed, "
            "or it is 2.x, which has no TransformerBridge); expected TransformerLens 3.x or 4.x, which can wrap "
            "a transformers model. Fix: pip install 'headkit[transformer-lens]' in a fresh environment, or drop "
            "--adapter (a 2.x HookedTransformer works through the Python API: hk.get_backend(model, tokenizer))"
        ) from None
    return TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer, device=where)
