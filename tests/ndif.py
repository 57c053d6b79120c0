"""A stricter stand-in for an NDIF server than nnsight's ``remote="local"``, for the tests.

nnsight's local simulation checks that a request deserialises, but then runs the *original* objects,
and it leaves installed packages importable, so it cannot notice code that needs headkit or jaxtyping
on the server. ``StrictRemote`` does what a server does, in this process:

1. serialise the trace exactly as a remote request;
2. deserialise it while ``headkit`` and ``jaxtyping`` are absent (hidden from ``sys.modules`` and
   unimportable), recording every module the payload asks the unpickler for;
3. run the *restored* block against the model, still without headkit or jaxtyping;
4. send the saved values back through ``torch.save`` / ``torch.load``, as the server does, and push
   them into the caller's frame.
"""

from __future__ import annotations

import importlib.abc
import io
import linecache
import sys
import weakref

import torch
from cloudpickle import cloudpickle as _cloudpickle
from nnsight.intervention.serialization import CustomCloudUnpickler
from nnsight.schema.request import RequestModel
from nnsight.tracing.backend import Backend
from nnsight.tracing.tracer import _saves, save
from nnsight.tracing.util import push

ABSENT = ("headkit", "jaxtyping")
"""Not installed on NDIF."""

TRACE_MODULES = {"torch", "numpy", "einops", "math", "collections", "typing", "operator"}
"""What code running in a trace may import there (the issue's list)."""

PICKLE_MACHINERY = {"builtins", "copyreg", "_codecs", "cloudpickle", "nnsight", "transformers"}
"""What any nnsight payload needs to be rebuilt at all (the tracer, the model reference, functions)."""


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not installed on the simulated server)")
        return None


class StrictRemote(Backend):
    """Serialise, rebuild without headkit or jaxtyping, run the rebuilt block, return saves by torch.save."""

    def __init__(self, model) -> None:
        self.model = model
        self.modules: set[str] = set()  # modules the payload needed to deserialise
        self.names: set[tuple[str, str]] = set()  # (module, name) the unpickler looked up
        self.payload_bytes = 0

    def __call__(self, tracer) -> None:
        from nnsight.ndif import pull_env

        pull_env()
        blob = RequestModel.serialize(tracer)
        self.payload_bytes = len(blob)
        persistent = self.model._remoteable_persistent_objects()
        found, names = self.modules, self.names

        class Recording(CustomCloudUnpickler):
            def find_class(self, module, name):
                found.add(module)
                names.add((module, name))
                return super().find_class(module, name)

        # deserialize() registers the block's source in linecache under the caller's file name; a server is
        # a fresh process, here it would corrupt later source lookups in that file, so put it back
        filename = tracer.info.frame.f_code.co_filename
        saved_lines = linecache.cache.get(filename)
        hidden = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] in ABSENT}
        blocker = _Block()
        sys.meta_path.insert(0, blocker)
        # cloudpickle rebuilds a class shipped by value into the class it tracks under the same id, if this
        # process has one, and overwrites that class's methods with the rebuilt ones: in one process the
        # "server" would replace headkit's own classes (Intervention & co.) for the rest of the session. A
        # server is a fresh process with no tracked classes, so the rebuild gets empty trackers here.
        trackers = _cloudpickle._DYNAMIC_CLASS_TRACKER_BY_CLASS, _cloudpickle._DYNAMIC_CLASS_TRACKER_BY_ID
        _cloudpickle._DYNAMIC_CLASS_TRACKER_BY_CLASS = weakref.WeakKeyDictionary()
        _cloudpickle._DYNAMIC_CLASS_TRACKER_BY_ID = weakref.WeakValueDictionary()
        try:
            try:
                restored = RequestModel.deserialize(blob, persistent, unpickler=Recording)
            finally:
                _cloudpickle._DYNAMIC_CLASS_TRACKER_BY_CLASS, _cloudpickle._DYNAMIC_CLASS_TRACKER_BY_ID = trackers
            if saved_lines is None:
                linecache.cache.pop(filename, None)
            else:
                linecache.cache[filename] = saved_lines
            restored.execute(restored.info.code)  # as the server runs it
            saves = _saves()
            result = {k: v for k, v in restored.info.frame.f_locals.items() if id(v) in saves}
            sent = io.BytesIO()
            torch.save(result, sent)  # what the server sends back
        finally:
            sys.meta_path.remove(blocker)
            sys.modules.update(hidden)
        sent.seek(0)
        result = torch.load(sent, map_location="cpu", weights_only=False)
        for value in result.values():
            save(value)
        push(tracer.info.frame, result)

    def roots(self) -> set[str]:
        return {module.split(".")[0] for module in self.modules}
