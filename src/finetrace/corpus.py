"""Reading documents: fine-tuning records from `.txt`/`.jsonl` files, and plain
texts for the activation corpus from files or a Hugging Face dataset, streamed.

A record is a dict with either a `text` string or a `messages` list of
`{"role", "content"}` turns (chat data), and optionally a `source` string that
names where the text came from (reports break results down by it). Every
malformed input ends in a `FinetraceError` that names the file and the line.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetrace.errors import FinetraceError

Record = dict[str, Any]
SUFFIXES = (".txt", ".jsonl")
CHAT_ROLES = ("system", "user", "assistant")
SOURCE_FIELD = "source"


def read_records(path: str | Path, text_field: str = "text") -> list[Record]:
    """Every record of a data file, validated; raises `FinetraceError` on bad input."""
    path = Path(path)
    records = list(iter_records(path, text_field))
    if not records:
        raise FinetraceError(f"{path} holds no documents: give a file with at least one record")
    return records


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """The plain-text documents of a file (chat records are refused)."""
    texts = list(iter_texts(path, text_field))
    if not texts:
        raise FinetraceError(f"{path} holds no documents: give a file with at least one record")
    return texts


def record_texts(record: Record) -> list[str]:
    """The text of a record: its `text`, or the content of each chat turn."""
    return [record["text"]] if "text" in record else [turn["content"] for turn in record["messages"]]


def iter_texts(source: str | Path, text_field: str = "text") -> Iterator[str]:
    """Plain texts, one at a time, from a `.txt`, `.jsonl` or `.parquet` file, or else from a
    Hugging Face dataset (a hub id or a local dataset directory) in streaming mode."""
    return (text for text, _ in iter_sourced_texts(source, text_field))


def iter_sourced_texts(source: str | Path, text_field: str = "text") -> Iterator[tuple[str, str]]:
    """`(text, source)` pairs as `iter_texts` reads them; the source is "" where none is given."""
    path = Path(source)
    if path.is_file() and path.suffix == ".parquet":
        yield from _parquet_texts(path, text_field)
    elif path.is_file() or path.suffix in SUFFIXES:
        for record in iter_records(path, text_field):
            if "text" not in record:
                raise FinetraceError(f"{path} holds chat records; a plain-text corpus is expected here")
            yield record["text"], record.get(SOURCE_FIELD, "")
    else:
        yield from _dataset_texts(str(source), text_field)


def iter_records(path: Path, text_field: str = "text") -> Iterator[Record]:
    """Records one at a time, so a large file never sits in memory whole."""
    if path.suffix not in SUFFIXES:
        raise FinetraceError(f"{path}: unsupported format {path.suffix!r}; use one of {SUFFIXES}")
    if path.suffix == ".txt":
        for _, line in numbered_lines(path):
            if line.strip():
                yield {"text": line.rstrip("\n")}
    else:
        for where, raw in iter_json_objects(path):
            yield _record(raw, where, text_field)


def iter_json_objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(file:line, object)` for each non-blank line of a JSONL file."""
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        yield where, json_object(line, where)


def json_object(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as a dict; `where` (file:line) names it in the error."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as error:
        raise FinetraceError(f"{where}: invalid JSON ({error.msg})") from None
    if not isinstance(raw, dict):
        raise FinetraceError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    return raw


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Lines decoded one by one (not in buffered chunks), so an error names its line."""
    if not path.is_file():
        raise FinetraceError(f"file {path} does not exist")
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise FinetraceError(
                    f"{path}:{number} is not valid UTF-8 ({error.reason}); re-encode the file as UTF-8"
                ) from None
            del raw  # a long line is held once, as text, while the reader works on it
            yield number, line


def _record(raw: dict[str, Any], where: str, text_field: str) -> Record:
    if "messages" in raw:
        record = {"messages": _validated_messages(raw["messages"], where)}
    elif text_field in raw:
        if not isinstance(raw[text_field], str):
            raise FinetraceError(f"{where}: field {text_field!r} must be a string")
        record = {"text": raw[text_field]}
    else:
        raise FinetraceError(f"{where}: record has neither {text_field!r} nor 'messages' (fields: {sorted(raw)})")
    if isinstance(raw.get(SOURCE_FIELD), str):
        record[SOURCE_FIELD] = raw[SOURCE_FIELD]
    return record


def _validated_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise FinetraceError(f"{where}: 'messages' must be a non-empty list of turns")
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in CHAT_ROLES:
            raise FinetraceError(f"{where}: every turn needs a role among {CHAT_ROLES}")
        if not isinstance(turn.get("content"), str):
            raise FinetraceError(f"{where}: every turn needs a string 'content'")
    if not any(turn["role"] == "assistant" for turn in messages):
        raise FinetraceError(f"{where}: a chat record needs at least one assistant turn")
    return [{"role": turn["role"], "content": turn["content"]} for turn in messages]


def _parquet_texts(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    import pyarrow
    import pyarrow.parquet as pq

    try:  # a corrupt file can fail at the footer or in any batch
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
        if text_field not in names:
            raise FinetraceError(f"{path} has no column {text_field!r} (columns: {names})")
        columns = [text_field] + ([SOURCE_FIELD] if SOURCE_FIELD in names else [])
        for batch in file.iter_batches(columns=columns):
            for row in batch.to_pylist():
                if row[text_field] and not isinstance(row[text_field], str):
                    raise FinetraceError(
                        f"{path}: column {text_field!r} must hold strings, found {type(row[text_field]).__name__}"
                    )
                if row[text_field]:
                    yield row[text_field], str(row.get(SOURCE_FIELD) or "")
    except (pyarrow.ArrowException, OSError) as error:
        raise FinetraceError(
            f"{path} is not a readable Parquet file ({error}); check the file or convert it to JSONL"
        ) from None


def _dataset_texts(name: str, text_field: str) -> Iterator[tuple[str, str]]:
    import datasets

    try:
        stream = datasets.load_dataset(name, split="train", streaming=True)
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        raise FinetraceError(f"{name} is neither a corpus file nor a loadable dataset: {error}") from None
    for row in stream:
        if text_field not in row:
            raise FinetraceError(f"dataset {name} has no field {text_field!r} (fields: {sorted(row)})")
        if row[text_field]:
            yield row[text_field], str(row.get(SOURCE_FIELD) or "")
