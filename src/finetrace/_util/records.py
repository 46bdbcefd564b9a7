"""Result records as JSON-ready data and back, read by their type hints.

A `Result` is a dataclass whose fields are JSON values, other records, or lists,
tuples and string-keyed dicts of them. `to_dict` also writes the properties a
record lists in `derived` (numbers a reader of the JSON wants, such as a p-value);
`from_dict` reads the fields only, so derived values are always recomputed.
"""

import reprlib
import sys
import types
from dataclasses import MISSING, fields, is_dataclass
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
            raise OtherVersion(
                f"{path} was written by another finetrace version or another tool "
                f"(schema {found}, expected {expected}): rerun what wrote it"
            )
        try:
            return cls.from_dict(data)
        except (RecordError, FinetraceError) as error:  # a value of the wrong type, or one a record refuses
            raise FinetraceError(f"{path} is corrupt: {error}") from None


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


def from_data(kind: Any, data: Any, where: str = "") -> Any:
    """`data`, as `to_data` wrote it, read back as the type `kind`; a value of another type, or a
    record without one of its fields, raises `RecordError` naming the field (`where`)."""
    origin, arguments = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        return _one_of(arguments, data, where)
    if is_dataclass(kind):
        _expect(data, dict, "an object", where)
        hints = get_type_hints(kind)
        required = [f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING]
        if missing := [name for name in required if name not in data]:
            raise RecordError(f"{_joined(where, missing[0])} is missing")
        _same_version(kind, data, where)
        return kind(
            **{
                f.name: from_data(hints[f.name], _field(data, f.name), _joined(where, f.name))
                for f in fields(kind)
                if f.name in data
            }
        )
    if origin in (list, tuple):
        _expect(data, list, "a list", where)
        if origin is list:
            return [from_data(arguments[0], item, f"{where}[{i}]") for i, item in enumerate(data)]
        items = arguments[:1] * len(data) if arguments[-1:] == (Ellipsis,) else arguments
        if len(items) != len(data):
            raise RecordError(f"{where} has {len(data)} items where {len(items)} belong")
        return tuple(from_data(k, item, f"{where}[{i}]") for i, (k, item) in enumerate(zip(items, data, strict=True)))
    if origin is dict:
        _expect(data, dict, "an object", where)
        return {key: from_data(arguments[1], item, f"{where}[{key!r}]") for key, item in data.items()}
    if kind is float:
        _expect(data, (int, float), "a number", where)
        if isinstance(data, int) and abs(data) > sys.float_info.max:
            raise RecordError(f"{where} is a whole number too large for any measure")
        return float(data)  # JSON writes 2.0 as 2.0, but a hand-edited file may say 2
    if kind in SCALARS:
        _expect(data, kind, SCALARS[kind], where)
    if kind is Path:
        _expect(data, str, "a path", where)
        return Path(data)
    return data


def _same_version(kind: type, data: dict, where: str) -> None:
    """A record inside another is of the version its container's version implies: a mismatch is
    a spliced or edited file (the outermost record's version is `Result.read`'s to check)."""
    expected = next((f.default for f in fields(kind) if f.name == "schema_version"), None)
    found = data.get("schema_version", expected)
    if where and expected is not None and found != expected:
        raise RecordError(f"{_joined(where, 'schema_version')} is {found!r} where this version writes {expected}")


class OtherVersion(FinetraceError):
    """A record written by another finetrace version (or another tool): not damaged, only not ours."""


class RecordError(ValueError):
    """A record's value that is not of its field's type."""


SCALARS = {int: "a whole number", str: "a string", bool: "true or false"}
NOT_FINITE = ("nan", "inf", "-inf")  # what `json_safe` writes beside a number JSON cannot hold
SHORT = reprlib.Repr()  # a value quoted in an error, however long or deep
SHORT.maxlevel, SHORT.maxstring, SHORT.maxother = 2, 40, 40


def _expect(data: Any, kind: type | tuple[type, ...], name: str, where: str) -> None:
    if isinstance(data, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        kind = ()  # JSON's true is not a number
    if not isinstance(data, kind):
        raise RecordError(f"{where or 'the record'} should be {name}, not {SHORT.repr(data)}")


def _joined(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _field(data: dict[str, Any], name: str) -> Any:
    """A field's value; a number JSON could not hold was written as null with `NAME_not_finite` beside it."""
    not_finite = data.get(f"{name}{NOT_FINITE_SUFFIX}")
    if data[name] is None and not_finite is not None:
        if not_finite not in NOT_FINITE:
            raise RecordError(
                f"{name}{NOT_FINITE_SUFFIX} should be one of {', '.join(NOT_FINITE)}, not {SHORT.repr(not_finite)}"
            )
        return float(not_finite)
    return data[name]


def _one_of(kinds: tuple[Any, ...], data: Any, where: str) -> Any:
    """A value of a union: None, a value already of one of its plain types, or its one structured type."""
    if data is None:
        return None
    options = [kind for kind in kinds if kind is not type(None)]
    plain = [kind for kind in options if isinstance(kind, type) and not is_dataclass(kind)]
    if any(isinstance(data, kind) and not isinstance(data, bool) for kind in plain):
        return data
    return from_data(options[0], data, where)
