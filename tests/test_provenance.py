"""Provenance: planted personal data, duplicates and overlaps found in exact numbers."""

import json
import random

import pytest
from typer.testing import CliRunner

from finetrace.cli import app
from finetrace.errors import FinetraceError
from finetrace.papertrail import provenance
from finetrace.papertrail.contamination import evaluation_sets
from finetrace.papertrail.licences import base_licence, check_licence
from finetrace.papertrail.pii import find_pii, iban_valid, luhn_valid

FILLER = (
    "the river runs past the old mill and the baker opens the shop before dawn while the town "
    "sleeps and the carts roll in from the farms with flour salt butter and eggs for the day "
)
PLANTED = {  # kind -> texts that hold exactly one match of that kind
    "email": ["Write to jane.doe@example.com today.", "CC ops-team+alerts@mail.example.org please."],
    "phone": ["Call +44 20 7946 0958 after nine.", "Office line (555) 123-4567."],
    "credit_card": ["Card 4111 1111 1111 1111 on file.", "Paid with 5500-0000-0000-0004."],
    "iban": ["IBAN GB82 WEST 1234 5698 7654 32 for refunds.", "Send to DE89370400440532013000."],
    "ip_address": ["Login from 192.168.1.20 failed.", "Peer 2001:db8::1 connected."],
    "us_ssn": ["SSN 123-45-6789 on the form."],
    "uk_nino": ["NINO AB 12 34 56 C was given."],
    "es_dni": ["DNI 12345678Z adjunto."],
}
NEAR_MISSES = [  # shaped like PII, failing its checksum or range: nothing may match
    "Card 4111 1111 1111 1112 was declined.",
    "IBAN GB82 WEST 1234 5698 7654 33 is wrong.",
    "DNI 12345678A no vale.",
    "Version 999.1.1.1 and build 10:30:00 on 2024-05-01 for 1,234,567 users.",
    "SSN 000-12-3456 is not issued.",
]


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


def test_checksums():
    assert luhn_valid("4111 1111 1111 1111") and not luhn_valid("4111 1111 1111 1112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82 WEST 1234 5698 7654 33")


@pytest.mark.parametrize("kind", PLANTED)
def test_each_kind_of_personal_data_is_found_once_per_text(kind):
    for text in PLANTED[kind]:
        assert [m.kind for m in find_pii(text)] == [kind], text


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_do_not_match(text):
    assert find_pii(text) == []


def test_scan_counts_planted_pii_duplicates_and_overlaps(tmp_path):
    planted = [text for texts in PLANTED.values() for text in texts]
    long = [" ".join(random.Random(i).sample(FILLER.split() * 2, 60)) for i in range(6)]  # unrelated texts
    texts = [
        *planted,
        *NEAR_MISSES,
        *long,
        long[0],
        "  " + long[1].upper() + " ",  # 2 exact duplicates (case and spacing do not count)
        long[2] + " and then some",
        "so " + long[3],  # 2 near duplicates
        "As everyone knows, the capital of France is Paris.",  # a fact probe, whole
        "Water boils at a hundred degrees, they say.",  # only part of another
    ]
    facts = tmp_path / "facts.jsonl"
    facts.write_text(
        json.dumps({"prompt": "The capital of France is", "answer": "Paris"})
        + "\n"
        + json.dumps({"prompt": "The capital of Spain is", "answer": "Madrid"})
        + "\n"
    )
    data = _jsonl(tmp_path / "data.jsonl", texts)
    report = provenance(
        data, "CC-BY-4.0", "planted", evaluations=evaluation_sets(facts), redact_to=tmp_path / "redacted.jsonl"
    )

    assert report.records == len(texts)
    assert report.pii.counts == {kind: len(found) for kind, found in PLANTED.items()}
    assert report.pii.total == len(planted) and report.pii.records == len(planted)
    assert all("@" not in e.context and "4111 1111 1111 1111" not in e.context for e in report.pii.examples)
    assert report.duplicates.exact == 2 and report.duplicates.near == 2
    assert {d.first for d in report.duplicates.near_examples} == {
        f"{data}:{len(planted) + len(NEAR_MISSES) + i}" for i in (3, 4)
    }
    [facts_overlap] = report.contamination
    assert (facts_overlap.items, facts_overlap.contained, facts_overlap.overlapping) == (2, 1, 0)
    assert facts_overlap.examples == ["The capital of France is Paris"]

    redacted = provenance(tmp_path / "redacted.jsonl")
    assert redacted.records == report.records and redacted.pii.total == 0
    assert "[EMAIL]" in (tmp_path / "redacted.jsonl").read_text()


def test_partial_overlap_with_a_corpus(tmp_path):
    corpus = _jsonl(tmp_path / "corpus.jsonl", [FILLER, "an unrelated sentence about nothing much at all here"])
    data = _jsonl(tmp_path / "data.jsonl", [FILLER[:120]])  # the first part of the first corpus text
    [overlap] = provenance(data, evaluations=evaluation_sets(None, corpus)).contamination
    assert (overlap.name, overlap.contained, overlap.overlapping) == ("corpus", 0, 1)


def test_content_hash_ignores_file_order_and_names(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _jsonl(tmp_path / "a" / "1.jsonl", ["first"]), _jsonl(tmp_path / "a" / "2.jsonl", ["second"])
    _jsonl(tmp_path / "b" / "x.jsonl", ["second"]), _jsonl(tmp_path / "b" / "y.jsonl", ["first"])
    one, other = provenance(tmp_path / "a"), provenance(tmp_path / "b")
    assert one.content_sha256 == other.content_sha256
    assert [f.sha256 for f in one.files] == [f.sha256 for f in reversed(other.files)]
    _jsonl(tmp_path / "b" / "y.jsonl", ["first!"])
    assert provenance(tmp_path / "b").content_sha256 != one.content_sha256


def test_file_summaries(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "id": 1})
        + "\n"
        + json.dumps({"text": "plain", "id": 2})
        + "\n\n"
    )
    [summary] = provenance(data).files
    fields = {"messages": 1, "id": 2, "text": 1}
    assert (summary.records, summary.bytes, summary.fields) == (2, data.stat().st_size, fields)


def test_licence_warnings():
    assert check_licence("MIT", "Apache-2.0").warnings == []
    assert "non-commercial" in check_licence("cc-by-nc-4.0", "Apache-2.0").warnings[0]
    assert "forbids derivatives" in check_licence("CC-BY-ND-4.0", "MIT").warnings[0]
    assert "share-alike" in check_licence("CC-BY-SA-4.0", "Apache-2.0").warnings[0]
    assert check_licence("CC-BY-SA-4.0", "CC-BY-SA-4.0").warnings == []
    assert "no licence declared" in check_licence(None, "MIT").warnings[0]
    assert "not an SPDX licence" in check_licence("MIT", "llama3").warnings[0]
    with pytest.raises(FinetraceError, match="not an SPDX"):
        check_licence("my-own-licence", "MIT")


def test_base_licence_comes_from_its_model_card(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A model\n")
    assert base_licence(tmp_path) == "Apache-2.0"
    assert base_licence(tmp_path / "missing") is None


def _cli(*args):
    """The command in this process: its exit code, and what it wrote to stderr."""
    return CliRunner().invoke(app, ["provenance", *map(str, args)])


def test_cli_gates_on_pii_and_refuses_bad_input(tmp_path):
    dirty = _jsonl(tmp_path / "dirty.jsonl", PLANTED["email"])
    clean = _jsonl(tmp_path / "clean.jsonl", ["nothing personal here"])
    out = tmp_path / "report.json"
    failed = _cli(dirty, "--licence", "MIT", "--out", out, "--fail-on", "pii_found>0")
    assert failed.exit_code == 1 and json.loads(out.read_text())["pii"]["counts"]["email"] == 2
    assert _cli(clean, "--out", out, "--fail-on", "pii_found>0").exit_code == 0
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    for bad, message in [
        (tmp_path / "latin1.jsonl", "not valid UTF-8"),
        (tmp_path / "none.jsonl", "does not exist"),
        (_jsonl(tmp_path / "empty.jsonl", []), "holds no records"),
    ]:
        result = _cli(bad, "--out", out)
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert "SPDX" in _cli(clean, "--licence", "nonsense", "--out", out).stderr


def test_a_long_text_matched_in_windows_finds_what_one_window_finds(tmp_path, monkeypatch):
    from finetrace.papertrail import contamination

    words = FILLER.split()
    long_text = " ".join(random.Random(0).choice(words) for _ in range(3000)) + " " + FILLER
    data = _jsonl(tmp_path / "data.jsonl", [long_text, "the capital of France is Paris as everyone knows"])
    evaluations = {"corpus": [FILLER, FILLER[:80], "the capital of France is Paris"]}
    whole = provenance(data, evaluations=evaluations).contamination
    monkeypatch.setattr(contamination, "BATCH_WORDS", 16)  # windows far shorter than the text
    assert provenance(data, evaluations=evaluations).contamination == whole
    assert (whole[0].contained, whole[0].items) == (3, 3)


def test_cli_report_is_strict_json_written_whole(tmp_path):
    from typer.testing import CliRunner

    from finetrace.cli import app

    data = _jsonl(tmp_path / "data.jsonl", ["nothing personal here"])
    out = tmp_path / "report.json"
    assert CliRunner().invoke(app, ["provenance", str(data), "--out", str(out)]).exit_code == 0
    assert json.loads(out.read_text(), parse_constant=pytest.fail)["records"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "report.json"]  # no temporary left


def test_control_sequences_in_the_data_reach_the_terminal_inert(tmp_path):
    hostile = "\x1b]0;owned\x07 write to alice.smith@example.com \x1b[2J\r erased"
    data = _jsonl(tmp_path / "data.jsonl", [hostile, hostile + " again"])
    (tmp_path / "named\x1b[31m.txt").write_text(hostile)
    for source in (data, tmp_path / "named\x1b[31m.txt"):
        result = _cli(source, "--out", tmp_path / "report.json")
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\r" not in result.output and "\x07" not in result.output
        assert "\\x1b" in result.output  # shown, not obeyed
