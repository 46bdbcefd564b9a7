"""`finetrace audit`: the trace, the damage and the paper trail in one run, one report, one verdict.

diff (the trace) -> forget (lost facts, drift, refusals) -> provenance (of the data, when
given, or from the fine-tune's manifest) -> summary.json, report.html and
MODEL_CARD.md in one directory, and the `--fail-on` gates for the exit code.
"""

from dataclasses import dataclass, field
from pathlib import Path

from finetrace._util.outputs import check_output_dir, refuse_overlap, write_json
from finetrace.adl.records import DiffConfig
from finetrace.evals.records import ForgetConfig
from finetrace.gates import Gate
from finetrace.models.pair import load_pair
from finetrace.papertrail.scan import ProvenanceConfig, ProvenanceReport
from finetrace.report import write_reports
from finetrace.report.words import verdict
from finetrace.results import SUMMARY_NAME, AuditResult
from finetrace.run import RunConfig
from finetrace.spectra.intruders import SpectraConfig
from finetrace.train.finetune import FinetuneResult
from finetrace.verbs.diff import diff
from finetrace.verbs.forget import forget
from finetrace.verbs.inputs import behaviour_for, corpus_for, facts_for
from finetrace.verbs.provenance import provenance
from finetrace.verbs.weights import weights

CONTAMINATION_CORPUS_ITEMS = 1000  # corpus texts looked for in the fine-tuning data


@dataclass(frozen=True)
class AuditConfig:
    diff: DiffConfig = field(default_factory=DiffConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    run: RunConfig = field(default_factory=RunConfig)  # shared by both analyses
    # The weights' section; None skips it (an SVD of every matrix takes minutes on a large model).
    weights: SpectraConfig | None = None


def audit(
    base: str | Path,
    finetuned: str | Path,
    corpus: str | Path | None = None,
    out: str | Path = "finetrace-audit",
    data: str | Path | None = None,
    facts: str | Path | None = None,
    control: str | Path | None = None,
    config: AuditConfig = AuditConfig(),
    fail_on: tuple[Gate, ...] = (),
    licence: str | None = None,
    behaviour: str | Path | bool = True,
) -> AuditResult | None:
    """Audit a fine-tune: trace, lost facts and drift, written as a report under `out`.

    Args:
        base, finetuned: the pair (directories or hub ids; `finetuned` may be a PEFT adapter).
        corpus: unrelated general text, for the trace and for the drift measures (default for a
            zoo organism: the zoo's held-out text).
        out: output directory: `summary.json`, `report.html`, `MODEL_CARD.md`, `diff/`, `forget/`
            (and `weights/` when `config.weights` asks for the weights' section).
        data: the fine-tuning data, when known.
        facts: cloze facts (JSONL; default: a zoo organism's planted facts, else finetrace's own).
        control: a control fine-tune of `base`, scored as a second reference.
        fail_on: conditions that mark the audit failed (see `finetrace.gates`).
        licence: the data's SPDX licence (default: the one its `finetrace finetune` manifest declares).
        behaviour: chat prompts to refuse or answer, for the refusal rates (True: a zoo organism's
            own, else finetrace's built-in set; False skips them).

    Under `torchrun` or `accelerate launch` the processes share the trace's collection; the
    main process does the rest and returns the result, the others return None.
    """
    corpus, facts = corpus_for(finetuned, corpus), facts_for(finetuned, facts)
    behaviour = behaviour_for(finetuned, behaviour)
    inputs = {"base model": base, "fine-tuned model": finetuned, "corpus": corpus, "data": data, "facts": facts}
    refuse_overlap(out, inputs | {"control": control, "behaviour": behaviour})
    out = check_output_dir(out, "--out")
    run = config.run  # one pair serves both analyses
    pair = load_pair(base, finetuned, run.device, run.dtype, run.strict)
    trace = diff(base, finetuned, corpus, out / "diff", config.diff, run, data=data, control=control, pair=pair)
    if trace is None:  # another process of a launched run: its share of the collection is done
        return None
    damage = forget(base, finetuned, facts, corpus, out / "forget", config.forget, run, pair, behaviour or False)
    pair.release()  # an adapter's matrices are read with a model of their own
    spectra = weights(base, finetuned, out / "weights", config.weights, run) if config.weights else None
    manifest = FinetuneResult.load(finetuned)
    paper_trail = _paper_trail(base, data, licence, facts, corpus, manifest, run.text_field)
    result = AuditResult(trace, damage, manifest, paper_trail, list(fail_on), spectra)
    write_json(out / SUMMARY_NAME, {**result.to_dict(), "verdict": verdict(result)})
    write_reports(result, out)
    return result


def _paper_trail(
    base, data, licence: str | None, facts, corpus, manifest: FinetuneResult | None, text_field: str
) -> ProvenanceReport | None:
    """A fresh scan of the data against this audit's own evaluation data, else the manifest's."""
    recorded = manifest.provenance if manifest else None
    if data is None:
        return recorded
    licence = licence or (recorded.licence.data if recorded else None)
    source = recorded.source if recorded else None
    config = ProvenanceConfig(text_field=text_field)
    return provenance(
        data, licence, source, base, facts, corpus, corpus_items=CONTAMINATION_CORPUS_ITEMS, config=config
    )
