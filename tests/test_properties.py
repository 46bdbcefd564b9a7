"""Properties that must hold for any input: readers, PII detectors, gates, escaping, JSON."""

import contextlib
import hashlib
import io
import json
import math
import string
import types
from dataclasses import MISSING, fields, is_dataclass
from itertools import pairwise
from pathlib import Path
from typing import Union, get_args, get_origin, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from finetrace._util.outputs import json_safe
from finetrace._util.records import Result, to_data
from finetrace._util.terminal import CONTROL, escape
from finetrace.corpus import read_records
from finetrace.errors import FinetraceError
from finetrace.gates import METRICS, OPERATORS, Gate, parse_gate
from finetrace.papertrail.duplicates import normalized_digest
from finetrace.papertrail.pii import DNI_LETTERS, find_pii, redact
from finetrace.report.card import markdown_text

settings.register_profile("finetrace", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("finetrace")

TEXT = st.text(st.characters(codec="utf-8"), max_size=200)  # any Unicode, surrogates aside
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
ROLES = st.sampled_from(["system", "user", "assistant", "bot", "", 3])


@given(texts=st.lists(TEXT.filter(str.strip), min_size=1, max_size=8), ascii_only=st.booleans())
def test_jsonl_text_records_read_back_as_written(tmp_path_factory, texts, ascii_only):
    path = tmp_path_factory.mktemp("jsonl") / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=ascii_only) + "\n" for t in texts), encoding="utf-8")
    assert read_records(path) == [{"text": t} for t in texts]


@given(lines=st.lists(st.binary(max_size=60) | JSON.map(json.dumps).map(str.encode), min_size=1, max_size=6))
def test_any_bytes_are_read_or_refused_with_a_finetrace_error(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("bytes") / "data.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    try:
        records = read_records(path)
    except FinetraceError:
        return
    assert all(isinstance(r.get("text"), str) or isinstance(r.get("messages"), list) for r in records)


@given(turns=st.lists(st.fixed_dictionaries({"role": ROLES, "content": TEXT | st.integers()}), max_size=5))
def test_chat_records_are_validated_turn_by_turn(tmp_path_factory, turns):
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    path.write_text(json.dumps({"messages": turns}) + "\n")
    valid = (
        bool(turns)
        and all(t["role"] in ("system", "user", "assistant") and isinstance(t["content"], str) for t in turns)
        and any(t["role"] == "assistant" for t in turns)
    )
    if valid:
        assert read_records(path) == [{"messages": turns}]
    else:
        with pytest.raises(FinetraceError):
            read_records(path)


@given(text=TEXT)
def test_pii_detection_never_fails_and_its_matches_redact_cleanly(text):
    matches = find_pii(text)
    assert all(0 <= m.start < m.end <= len(text) for m in matches)
    assert all(a.end <= b.start for a, b in pairwise(matches))  # sorted, never overlapping
    assert find_pii(redact(text, matches)) == []


def _luhn_card(digits: str) -> str:
    """`digits` (15 of them) completed with the check digit that makes a valid card number."""
    for check in string.digits:
        total = sum(
            d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d)
            for i, d in enumerate(int(c) for c in reversed(digits + check))
        )
        if total % 10 == 0:
            return digits + check
    raise AssertionError("a check digit always exists")


def _iban(country: str, bban: str) -> str:
    number = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{country}{98 - number % 97:02d}{bban}"


def _dni(number: str) -> str:
    return number + DNI_LETTERS[int(number) % 23]


DIGITS = st.text(string.digits, min_size=1, max_size=1)
VALID = {  # kind -> a strategy of valid numbers of that kind
    "credit_card": st.text(string.digits, min_size=14, max_size=14).map(lambda d: _luhn_card("4" + d)),
    "iban": st.tuples(
        st.sampled_from(["DE", "FR", "GB", "NL", "ES"]), st.text(string.digits, min_size=18, max_size=18)
    ).map(lambda c: _iban(*c)),
    "es_dni": st.text(string.digits, min_size=8, max_size=8).map(_dni),
}
CONTEXT = "Please use {} for the payment."


@pytest.mark.parametrize("kind", VALID)
@given(data=st.data())
def test_planted_valid_numbers_are_always_found(kind, data):
    number = data.draw(VALID[kind])
    assert [m.kind for m in find_pii(CONTEXT.format(number))] == [kind]


@pytest.mark.parametrize("kind", VALID)
@given(data=st.data())
def test_a_number_with_one_digit_changed_is_never_reported(kind, data):
    number = data.draw(VALID[kind])
    where = data.draw(st.sampled_from([i for i, c in enumerate(number) if c.isdigit()]))
    digit = data.draw(DIGITS.filter(lambda d: d != number[where]))
    changed = number[:where] + digit + number[where + 1 :]  # every checksum here catches this
    assert find_pii(CONTEXT.format(changed)) == []


@given(
    metric=st.sampled_from(list(METRICS)),
    op=st.sampled_from(list(OPERATORS)),
    threshold=st.floats(allow_nan=False, allow_infinity=False),
    spaces=st.sampled_from(["", " ", "  "]),
)
def test_gates_parse_what_they_print(metric, op, threshold, spaces):
    gate = parse_gate(f"{metric}{spaces}{op}{spaces}{threshold!r}")
    assert (gate.metric, gate.op, gate.threshold) == (metric, op, threshold)
    again = parse_gate(str(gate))
    assert (again.metric, again.op) == (metric, op) and again.threshold == pytest.approx(threshold, rel=1e-5)


@given(text=TEXT)
def test_any_condition_is_a_gate_or_a_finetrace_error(text):
    try:
        gate = parse_gate(text)
    except FinetraceError:
        return
    assert gate.metric in METRICS and math.isfinite(gate.threshold)


@given(
    metric=st.sampled_from(list(METRICS)),
    op=st.sampled_from(list(OPERATORS)),
    value=st.floats(),
    threshold=st.floats(allow_nan=False, allow_infinity=False),
)
def test_a_non_finite_metric_never_passes_a_gate(metric, op, value, threshold):
    outcome = parse_gate(f"{metric}{op}{threshold!r}").check({metric: value})
    if math.isfinite(value):
        assert outcome.holds == OPERATORS[op](value, threshold) and not outcome.reason
    else:
        assert outcome.holds is True and "passes no gate" in outcome.reason
    assert parse_gate(f"{metric}{op}{threshold!r}").holds({metric: None}) is True
    assert parse_gate(f"{metric}{op}{threshold!r}").crossed({metric: value}) == outcome.holds  # a series' step
    assert parse_gate(f"{metric}{op}{threshold!r}").crossed({metric: None}) is False


@given(text=TEXT)
def test_markdown_text_is_one_inert_line(text):
    shown = markdown_text(text)
    assert "<" not in shown and ">" not in shown and "\n" not in shown and not CONTROL.search(shown)
    unescaped = shown.replace("\\\\", "")
    assert all(unescaped[i - 1] == "\\" for i, c in enumerate(unescaped) if c in "`*_[]()#!|~")


@given(text=TEXT | st.lists(st.sampled_from(["a", "B ", " ", "\n", "\u2028", "ß", "Ǆ"]), max_size=9000).map("".join))
def test_the_duplicate_digest_is_that_of_the_normalized_text(text):
    simple = " ".join(text.casefold().split())
    assert normalized_digest(text) == int.from_bytes(hashlib.blake2b(simple.encode(), digest_size=8).digest())


@given(value=JSON)
def test_json_is_strict_and_keeps_what_is_finite(value):
    written = json.dumps(json_safe(value), allow_nan=False)  # raises on a NaN left behind
    if "NaN" not in json.dumps(value) and "Infinity" not in json.dumps(value):
        assert json.loads(written) == json.loads(json.dumps(value))


def test_a_non_finite_value_is_written_as_null_with_its_reason():
    assert json_safe({"loss": math.nan, "curve": [1.0, math.inf]}) == {
        "loss": None,
        "loss_not_finite": "nan",
        "curve": [1.0, None],
    }


def _subclasses(kind: type) -> list[type]:
    return [grand for sub in kind.__subclasses__() for grand in (sub, *_subclasses(sub))]


def _example(kind):
    """The smallest valid value of a record's field type, built from its type hints."""
    origin, arguments = get_origin(kind), get_args(kind)
    if kind is Gate:  # its fields take only a metric's name and an operator
        return to_data(parse_gate("lost_fraction>0.05"))
    if origin in (Union, types.UnionType):
        return _example(next(a for a in arguments if a is not type(None)))
    if is_dataclass(kind):  # a field with a default (a setting, the schema's version) takes it
        hints = get_type_hints(kind)
        return {
            f.name: _example(hints[f.name])
            if f.default is MISSING and f.default_factory is MISSING
            else to_data(f.default_factory() if f.default is MISSING else f.default)
            for f in fields(kind)
        }
    if origin in (list, tuple):
        items = arguments[:1] if arguments[-1:] == (Ellipsis,) or origin is list else arguments
        return [_example(item) for item in items]
    if origin is dict:
        return {"key": _example(arguments[1])}
    return {float: 0.5, int: 1, str: "a", bool: False, Path: "a"}.get(kind)


def _record_examples() -> dict[type, dict]:
    """Each record kind a finetrace command writes, as a minimal valid JSON document."""
    import finetrace.verbs.audit  # noqa: E401, F401  (every record kind imported)

    examples = {}
    for kind in _subclasses(Result):
        try:
            examples[kind] = json.loads(json.dumps(_example(kind)))
            kind.from_dict(examples[kind])
        except FinetraceError:  # a config whose smallest values it refuses: left to the zoo tests
            del examples[kind]
    return examples


RECORDS = _record_examples()
ODD_VALUES = (
    JSON
    | st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(2**70), True, "", [], {}])
    | st.integers(min_value=1, max_value=3000).map(lambda depth: "[" * depth + "]" * depth)
)


def _places(data, where=()):
    """Every place in a JSON document: the paths to its values."""
    yield where
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, item in items:
        yield from _places(item, (*where, key))


@pytest.mark.parametrize("kind", list(RECORDS), ids=lambda kind: kind.__name__)
@settings(max_examples=300)
@given(data=st.data())
def test_any_edit_of_a_record_is_read_or_refused_with_one_line(tmp_path_factory, kind, data):
    record = json.loads(json.dumps(RECORDS[kind]))
    place = data.draw(st.sampled_from(list(_places(record))[1:]))
    value = data.draw(ODD_VALUES)
    *parents, last = place
    target = record
    for key in parents:
        target = target[key]
    edit = data.draw(st.sampled_from(["delete", "replace", "not finite"]))
    if edit == "delete":
        del target[last]
    elif edit == "replace" or not isinstance(target, dict):
        target[last] = value
    else:  # as `json_safe` writes a NaN: null, and the value named beside it
        target[last], target[f"{last}_not_finite"] = None, value
    path = tmp_path_factory.mktemp("record") / "record.json"
    text = json.dumps(record)
    path.write_text(
        text if not isinstance(value, str) or not value.startswith("[[") else text.replace(f'"{value}"', value)
    )
    try:
        kind.read(path)
    except FinetraceError as error:
        assert "\n" not in str(error).strip()


@given(document=JSON)
def test_any_json_is_read_as_a_record_or_refused(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("json") / "record.json"
    path.write_text(json.dumps(document))
    for kind in RECORDS:
        with contextlib.suppress(FinetraceError):
            kind.read(path)


@given(text=TEXT)
def test_text_printed_on_a_terminal_obeys_no_control_character(text):
    console = Console(file=io.StringIO(), force_terminal=False, width=10_000)
    console.print(escape(text), highlight=False)
    assert not CONTROL.search(console.file.getvalue())
