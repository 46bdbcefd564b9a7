"""`finetrace provenance`: a dataset's paper trail, checked against what finetrace evaluates on,
written as `provenance.json`.

look for the evaluation data (fact probes, the first texts of a corpus) -> scan the dataset
(`papertrail.scan`): hashes, duplicates, personal data (with a redacted copy), licences, contamination.
"""

from pathlib import Path

from finetrace._util.outputs import check_output_dir, check_output_file, refuse_overlap, write_json
from finetrace.evals.facts import COMMON_FACTS
from finetrace.papertrail.contamination import evaluation_sets
from finetrace.papertrail.scan import ProvenanceConfig, ProvenanceReport
from finetrace.papertrail.scan import provenance as scan


def provenance(
    data: str | Path,
    licence: str | None = None,
    source: str | None = None,
    base: str | Path | None = None,
    facts: str | Path | None = None,
    corpus: str | Path | None = None,
    out: str | Path | None = None,
    redact: str | Path | None = None,
    corpus_items: int = 1000,
    config: ProvenanceConfig = ProvenanceConfig(),
) -> ProvenanceReport:
    """Scan a dataset (a `.jsonl`/`.txt` file or a directory of them) for its paper trail.

    Args:
        data, licence, source, base: the dataset, its SPDX licence, its source and the base model
            to be fine-tuned on it, as `papertrail.scan.provenance` takes them.
        facts: cloze facts to look for in the data (default: finetrace's common-knowledge facts).
        corpus: the corpus a diff or drift measure will read; its first `corpus_items` texts are
            looked for in the data.
        out: where to write the report as JSON (nothing is written when None).
        redact: where to write a copy with personal data replaced by its kind.
        config: duplicate detection, the text field, examples kept.
    """
    facts = facts if facts is not None else COMMON_FACTS
    inputs = {"data": data, "corpus": corpus, "facts": facts}
    if out is not None:
        refuse_overlap(out, inputs | {"redacted copy": redact})
        check_output_file(out)
    if redact is not None:
        refuse_overlap(redact, inputs, "--redact", containing=True)
        (check_output_dir if Path(data).is_dir() else check_output_file)(redact, "--redact")
    evaluations = evaluation_sets(facts, corpus, corpus_items, config.text_field)
    report = scan(data, licence, source, base, evaluations, redact, config)
    if out is not None:
        write_json(out, report.to_dict())
    return report
