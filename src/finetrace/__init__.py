"""finetrace: what did your fine-tune do to the model?

The public API mirrors the CLI: `audit` (the trace, the damage and the paper trail in
one run), `diff` (the trace), `forget` (the damage: facts, drift and, with `behaviour`,
refusals), `behaviour` (refusals lost and gained), `provenance` (the data), `finetune`,
`write_reports` (the report and the card, rebuilt from `AuditResult.read("summary.json")`),
`watch` (the cheap audit of every checkpoint of a run) and `build_zoo`, each with its config
and its result type; `RunConfig` (device, dtype, seed) is shared by every stage. The training
callback, `FinetraceCallback`, lives in `finetrace.integrations`, which imports `Trainer`.
"""

from finetrace.adl.diff import DiffConfig, DiffResult, diff
from finetrace.audit import AuditConfig, audit
from finetrace.errors import FinetraceError
from finetrace.evals.behaviour import BEHAVIOUR_PROMPTS, BehaviourConfig, BehaviourResult, behaviour
from finetrace.evals.forget import ForgetConfig, ForgetResult, forget
from finetrace.models.pair import ModelPair, load_pair
from finetrace.provenance import provenance
from finetrace.provenance.scan import ProvenanceConfig, ProvenanceReport
from finetrace.report import write_reports
from finetrace.results import AuditResult
from finetrace.run import RunConfig
from finetrace.train.finetune import FinetuneConfig, FinetuneResult, LoraSettings, finetune
from finetrace.train.loop import TrainConfig
from finetrace.watch.cheap import WatchConfig
from finetrace.watch.series import WatchSeries
from finetrace.watch.watch import watch
from finetrace.zoo import Zoo, build_zoo, open_zoo

__all__ = [
    "AuditConfig",
    "AuditResult",
    "BEHAVIOUR_PROMPTS",
    "BehaviourConfig",
    "BehaviourResult",
    "DiffConfig",
    "DiffResult",
    "FinetraceError",
    "FinetuneConfig",
    "FinetuneResult",
    "ForgetConfig",
    "ForgetResult",
    "LoraSettings",
    "ModelPair",
    "ProvenanceConfig",
    "ProvenanceReport",
    "RunConfig",
    "TrainConfig",
    "WatchConfig",
    "WatchSeries",
    "Zoo",
    "audit",
    "behaviour",
    "build_zoo",
    "diff",
    "finetune",
    "forget",
    "load_pair",
    "open_zoo",
    "provenance",
    "watch",
    "write_reports",
]
