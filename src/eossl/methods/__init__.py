"""Pretext methods, found by name so the CLI, configs and benchmarks need no edits per method."""

from __future__ import annotations

from ..errors import ConfigError

_METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator: make a PretextMethod subclass available as ``get_method(name)``."""

    def decorate(cls: type) -> type:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ConfigError(f"method name {name!r} is already taken by "
                              f"{_METHODS[name].__qualname__}")
        cls.method_name = name
        _METHODS[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type:
    """The method class registered under ``name``."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; expected one of: "
                          f"{', '.join(available_methods())}") from None


def available_methods() -> list[str]:
    return sorted(_METHODS)


def _import_all() -> None:
    """Import every module of this package: a method module registers itself on import, so a
    new method is one new file here and nothing else to edit."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()
