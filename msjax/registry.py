"""One registry shape for everything msjax picks by name: models, tasks, data sources, methods.

A registry maps a name to an entry and what the entry declares about itself; an entry joins by a
decorator in the file that defines it, so adding a model, task, source or method is that file
plus its ``@REGISTRY.register(...)`` line (models and methods: a file in their package)::

    MODELS = Registry("model")

    @MODELS.register("edsr", upsamples=True)
    class EDSR(nn.Module): ...

    MODELS.get("edsr")          # the class
    MODELS.info("edsr")         # {'upsamples': True}
    MODELS.names()              # every name, sorted

An unknown name is one ConfigError naming the choices (the config field is the registry's
``field``).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Iterable

from msjax.errors import ConfigError


class Registry:
    """Names to entries, filled by ``register``. On the first lookup the registry imports
    ``modules`` and every module of ``package`` (a new file there registers itself just by being
    there), so importing a registry imports none of its entries' dependencies up front."""

    def __init__(self, kind: str, field: str = "", modules: Iterable[str] = (),
                 package: str = ""):
        self.kind, self.field = kind, field or kind
        self._entries: dict[str, Any] = {}
        self._info: dict[str, dict] = {}
        self._modules, self._package, self._loaded = tuple(modules), package, False

    def register(self, name: str, **info) -> Callable[[Any], Any]:
        """A decorator that adds its function or class as ``name``, with ``info`` (what the
        entry declares: a model that upsamples, a task's evaluation t, ...)."""
        def add(entry):
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name], self._info[name] = entry, dict(info)
            return entry
        return add

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        modules = list(self._modules)
        if self._package:
            path = importlib.import_module(self._package).__path__
            modules += [f"{self._package}.{m.name}" for m in pkgutil.iter_modules(path)
                        if not m.name.startswith("_")]
        for module in modules:
            importlib.import_module(module)

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(sorted(self._entries))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str):
        self._load()
        if name not in self._entries:
            raise ConfigError(f"{self.field}={name!r} is unknown; choose one of "
                              f"{', '.join(repr(n) if not n else n for n in self.names())}")
        return self._entries[name]

    def info(self, name: str) -> dict:
        self.get(name)
        return dict(self._info[name])


# The training methods wrap the loop, so they sit above it and above ``build``, which reads their
# settings classes from this registry: it lives here, below both, and names its files as text.
METHODS = Registry("method", package="msjax.methods")
