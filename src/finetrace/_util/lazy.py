"""A package's public names, imported from their modules on first use (PEP 562): `import
finetrace` and the command line's start load no torch until a name that needs it is used."""

from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[Callable, Callable, list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`, which exports `exports` (module: names)."""
    where = {name: module for module, names in exports.items() for name in names}
    assert len(where) == sum(map(len, exports.values())), "a name is exported from two modules"

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(where[name]), name)
        setattr(import_module(package), name, value)  # the next lookup is an ordinary one
        return value

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__, sorted(where)
