"""ytune: Y-Tuning on cached features of a frozen encoder.

The public API, in the order a job uses it: `extract` a dataset once (`load_glue`, `load_files`,
`load_hf` name one; `ytune.extract` is that package, callable), `open_cache` to read what it wrote, `train` or `sweep` label heads on it,
`evaluate` them on any split, and `Predictor` to label new texts. Names load on first use, so
`import ytune` (and the `ytune` command) does not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "ExtractConfig": "ytune.extract.config",
    "ExtractResult": "ytune.extract.pipeline",
    "load_files": "ytune.extract.files",
    "load_glue": "ytune.extract.glue",
    "load_hf": "ytune.extract.hf",
    "Cache": "ytune.cache.reader",
    "open_cache": "ytune.cache.reader",
    "HeadConfig": "ytune.train.config",
    "HeadSpec": "ytune.train.config",
    "TrainConfig": "ytune.train.config",
    "evaluate": "ytune.train.evaluate",
    "sweep": "ytune.train.sweep",
    "Predictor": "ytune.predict",
    "UserError": "ytune.errors",
}
__all__ = [*_EXPORTS, "extract", "train", "__version__"]


class _Stage(types.ModuleType):
    """A stage's package that runs the stage when called: `ytune.extract` and `ytune.train` are
    both the folders of the layout and the functions of the API (`from ytune import extract`), and
    as real packages every import form (`import ytune.train.sweep as s`) keeps working."""

    def __call__(self, *args, **kwargs):
        module, name = self.__stage__
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


def _stage(package: str, module: str, name: str) -> None:
    sys.modules[package].__class__ = _Stage
    sys.modules[package].__stage__ = (module, name)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ytune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
