"""Result records as JSON-ready data and back, read by their type hints.

A `Result` is a dataclass whose fields are JSON values, other records, or lists,
tuples and string-keyed dicts of them. `to_dict` also writes the properties a
record lists in `derived` (numbers a reader of the JSON wants, such as a p-value);
`from_dict` reads the fields only, so derived values are always recomputed.
"""

import types
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, Union, get_args, get_origin, get_type_hints

from finetrace._util.outputs import NOT_FINITE_SUFFIX, read_json
from finetrace.errors import FinetraceError


class Result:
    derived: ClassVar[tuple[str, ...]] = ()  # properties written next to the fields

    def to_dict(self) -> dict[str, Any]:
        return to_data(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return from_data(cls, data)

    @classmethod
    def read(cls, path: str | Path) -> Self:
        """A result file of this version (its `schema_version` field's default), or one error line
        saying why not: missing, not JSON, another version's, or incomplete."""
        data = read_json(path)
        expected = next(f.default for f in fields(cls) if f.name == "schema_version")
        found = data.get("schema_version") if isinstance(data, dict) else None
        if found != expected:
            raise FinetraceError(
                f"{path} was written by another finetrace version or another tool "
                f"(schema {found}, expected {expected}): rerun what wrote it"
            )
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise FinetraceError(f"{path} is incomplete or corrupt ({type(error).__name__}: {error})") from None


def to_data(value: Any) -> Any:
    """`value` as JSON-ready data: records and dataclasses as dicts, tuples as lists, paths as strings."""
    if is_dataclass(value) and not isinstance(value, type):
        data = {f.name: to_data(getattr(value, f.name)) for f in fields(value)}
        return data | {name: to_data(getattr(value, name)) for name in getattr(value, "derived", ())}
    if isinstance(value, list | tuple):
        return [to_data(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_data(item) for key, item in value.items()}
    return str(value) if isinstance(value, Path) else value


def from_data(kind: Any, data: Any) -> Any:
    """`data`, as `to_data` wrote it, read back as the type `kind`."""
    origin, arguments = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        return _one_of(arguments, data)
    if is_dataclass(kind):
        hints = get_type_hints(kind)
        return kind(**{f.name: from_data(hints[f.name], _field(data, f.name)) for f in fields(kind) if f.name in data})
    if origin is list:
        return [from_data(arguments[0], item) for item in data]
    if origin is tuple:
        items = arguments[:1] * len(data) if arguments[-1:] == (Ellipsis,) else arguments
        return tuple(from_data(item_kind, item) for item_kind, item in zip(items, data, strict=True))
    if origin is dict:
        return {key: from_data(arguments[1], item) for key, item in data.items()}
    if kind is float and isinstance(data, int):
        return float(data)  # JSON writes 2.0 as 2.0, but a hand-edited file may say 2
    return Path(data) if kind is Path else data


def _field(data: dict[str, Any], name: str) -> Any:
    """A field's value; a number JSON could not hold was written as null with `NAME_not_finite` beside it."""
    not_finite = data.get(f"{name}{NOT_FINITE_SUFFIX}")
    return float(not_finite) if data[name] is None and not_finite else data[name]


def _one_of(kinds: tuple[Any, ...], data: Any) -> Any:
    """A value of a union: None, a value already of one of its plain types, or its one structured type."""
    if data is None:
        return None
    options = [kind for kind in kinds if kind is not type(None)]
    plain = [kind for kind in options if isinstance(kind, type) and not is_dataclass(kind)]
    if any(isinstance(data, kind) for kind in plain):
        return data
    return from_data(options[0], data)
