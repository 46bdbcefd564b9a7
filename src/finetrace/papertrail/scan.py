"""`finetrace provenance`: what a dataset holds, read in one streaming pass.

Per file: sha256, size, records and fields. For the whole dataset: a content
hash that does not depend on the order of its files, exact and near duplicates,
personal data, the declared licence against the base model's, and the overlap
with the evaluation data finetrace measures models on. Memory stays flat in the
size of the data: records are read, scanned and (with `redact`) written one by one.
"""

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from finetrace._util.fingerprints import file_sha256
from finetrace._util.progress import progress_bar
from finetrace._util.records import Result
from finetrace.corpus import json_object, numbered_lines
from finetrace.errors import FinetraceError
from finetrace.gates import PROVENANCE_METRICS
from finetrace.papertrail.contamination import Overlap, OverlapIndex
from finetrace.papertrail.duplicates import DuplicateConfig, DuplicateFinder, Duplicates
from finetrace.papertrail.licences import LicenceCheck, base_licence, check_licence
from finetrace.papertrail.ngrams import word_hashes
from finetrace.papertrail.pii import PII_KINDS, find_pii, redact, redacted_context

SCHEMA_VERSION = 2
DATA_SUFFIXES = (".jsonl", ".txt")
MB = 1e6


@dataclass(frozen=True)
class ProvenanceConfig:
    duplicates: DuplicateConfig = field(default_factory=DuplicateConfig)
    text_field: str = "text"  # the content of a record that has no chat `messages`
    examples_per_kind: int = 3  # redacted PII examples kept per kind


@dataclass(frozen=True)
class FileSummary:
    path: str
    sha256: str
    bytes: int
    records: int
    fields: dict[str, int]  # field name -> records that have it


@dataclass(frozen=True)
class PiiExample:
    record: str  # file:line
    kind: str
    context: str  # the text around the match, every match in it redacted


@dataclass
class PiiFindings:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PII_KINDS, 0))
    records: int = 0  # records with at least one match
    examples: list[PiiExample] = field(default_factory=list)
    derived = ("total",)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class ProvenanceReport(Result):
    data: str
    source: str | None  # where the data came from, as the user declared it
    files: list[FileSummary]
    content_sha256: str  # over the files' sha256 in sorted order: independent of file order and names
    licence: LicenceCheck
    duplicates: Duplicates
    pii: PiiFindings
    contamination: list[Overlap]
    redacted: str | None  # where the redacted copy was written
    seconds: float
    schema_version: int = SCHEMA_VERSION
    derived = ("records", "bytes")

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)


def provenance_metrics(report: ProvenanceReport | None) -> dict[str, int | None]:
    """`pii_found` and `contaminated` of a report; None without one."""
    if report is None:
        return dict.fromkeys(PROVENANCE_METRICS)
    return {"pii_found": report.pii.total, "contaminated": sum(overlap.contained for overlap in report.contamination)}


def provenance(
    data: str | Path,
    licence: str | None = None,
    source: str | None = None,
    base: str | Path | None = None,
    evaluations: dict[str, Iterable[str]] | None = None,
    redact_to: str | Path | None = None,
    config: ProvenanceConfig = ProvenanceConfig(),
) -> ProvenanceReport:
    """Scan a dataset (a `.jsonl`/`.txt` file or a directory of them) for its paper trail.

    Args:
        data: the dataset.
        licence: its SPDX licence expression, e.g. "CC-BY-4.0"; None warns that none was declared.
        source: where it came from (a URL, a description), recorded as given.
        base: the base model to be fine-tuned on it, whose model card declares its licence.
        evaluations: named evaluation texts (fact probes, a corpus) to look for in the data.
        redact_to: write a copy with every PII match replaced by its kind (a file for a
            file, a directory for a directory).
        config: duplicate detection, the text field, examples kept.
    """
    start = time.perf_counter()
    data = Path(data)
    files = data_files(data)
    licence_check = check_licence(licence, base_licence(base) if base is not None else None)
    scanners = _Scanners(DuplicateFinder(config.duplicates), OverlapIndex(evaluations or {}), PiiFindings(), config)
    summaries = []
    with progress_bar("provenance (MB)", max(1, round(sum(p.stat().st_size for p in files) / MB))) as advance:
        for path in files:
            with _redacted_file(data, path, Path(redact_to)) if redact_to is not None else nullcontext() as out:
                summaries.append(scanners.scan_file(path, out, advance))
    if not any(s.records for s in summaries):
        raise FinetraceError(f"{data} holds no records")
    content = hashlib.sha256("\n".join(sorted(s.sha256 for s in summaries)).encode()).hexdigest()
    return ProvenanceReport(
        data=str(data),
        source=source,
        files=summaries,
        content_sha256=content,
        licence=licence_check,
        duplicates=scanners.duplicates.found,
        pii=scanners.pii,
        contamination=scanners.overlaps.overlaps(),
        redacted=str(redact_to) if redact_to is not None else None,
        seconds=round(time.perf_counter() - start, 3),
    )


@dataclass
class _Scanners:
    """What one pass over the records feeds: duplicates, evaluation overlap, PII."""

    duplicates: DuplicateFinder
    overlaps: OverlapIndex
    pii: PiiFindings
    config: ProvenanceConfig

    def scan_file(self, path: Path, out: TextIO | None, advance) -> FileSummary:
        fields, records = Counter(), 0
        for line, record, size in _records(path):
            records += 1
            where = f"{path}:{line}"
            if isinstance(record, dict):
                fields.update(record.keys())
            content = _content(record, self.config.text_field)
            hashes = word_hashes(content)
            self.duplicates.add(str(path), line, content, hashes)
            self.overlaps.add(hashes)
            redacted = _scan_pii(record, where, self.pii, self.config.examples_per_kind)
            if out is not None:
                out.write((redacted if isinstance(redacted, str) else json.dumps(redacted, ensure_ascii=False)) + "\n")
            advance(size / MB)
        return FileSummary(
            str(path),
            file_sha256(path),
            path.stat().st_size,
            records,
            dict(fields) if path.suffix == ".jsonl" else {"text": records},
        )


def data_files(data: Path) -> list[Path]:
    """The data files of a file or a directory, in a stable order."""
    if data.is_dir():
        files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise FinetraceError(f"{data} holds no {' or '.join(DATA_SUFFIXES)} files")
        return files
    if not data.is_file():
        raise FinetraceError(f"{data} does not exist")
    if data.suffix not in DATA_SUFFIXES:
        raise FinetraceError(f"{data}: unsupported format {data.suffix!r}; use one of {DATA_SUFFIXES}")
    return [data]


def _records(path: Path) -> Iterator[tuple[int, Any, int]]:
    """`(line number, record, bytes)`: a JSON object per JSONL line, a string per text line."""
    for number, line in numbered_lines(path):
        if line.strip():
            record = line.rstrip("\n") if path.suffix == ".txt" else json_object(line, f"{path}:{number}")
            size = len(line)
            del line  # a long record is held once, as its record, while it is scanned
            yield number, record, size


def _content(record: Any, text_field: str) -> str:
    """The text a record teaches: chat turns, its text field, or else every string in it."""
    if isinstance(record, str):
        return record
    if isinstance(record.get("messages"), list):
        return "\n".join(turn.get("content", "") for turn in record["messages"] if isinstance(turn, dict))
    if isinstance(record.get(text_field), str):
        return record[text_field]
    return "\n".join(_strings(record))


def _scan_pii(record: Any, where: str, pii: PiiFindings, examples_per_kind: int) -> Any:
    """Count the record's PII into `pii`; return the record with every match redacted."""
    found = False

    def scan(text: str) -> str:
        nonlocal found
        matches = find_pii(text)
        for match in matches:
            found = True
            pii.counts[match.kind] += 1
            if sum(e.kind == match.kind for e in pii.examples) < examples_per_kind:
                pii.examples.append(PiiExample(where, match.kind, redacted_context(text, match, matches)))
        return redact(text, matches) if matches else text

    redacted = _map_strings(record, scan)
    pii.records += found
    return redacted


def _strings(value: Any) -> list[str]:
    """Every string inside a JSON value (keys aside), in order."""
    found = []
    _map_strings(value, lambda text: found.append(text) or text)
    return found


def _map_strings(value: Any, function) -> Any:
    """`value` with `function` applied to every string inside it (keys aside)."""
    if isinstance(value, str):
        return function(value)
    if isinstance(value, dict):
        return {key: _map_strings(item, function) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, function) for item in value]
    return value


def _redacted_file(data: Path, path: Path, redact_to: Path) -> TextIO:
    """The redacted copy of `path`: `redact_to` itself for a single file, else the same place under it."""
    target = redact_to if data.is_file() else redact_to / path.relative_to(data)
    if target.resolve() == path.resolve():
        raise FinetraceError(f"--redact {redact_to} would overwrite the data; choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.open("w", encoding="utf-8")
