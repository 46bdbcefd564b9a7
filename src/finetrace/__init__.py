"""finetrace: what did your fine-tune do to the model?

The public API mirrors the CLI: `audit` (the trace, the damage and the paper trail in
one run), `diff` (the trace), `forget` (the damage: facts, drift and, with `behaviour`,
refusals), `behaviour` (refusals lost and gained), `sample` (rare behaviours,
by sampling the amplified difference), `weights` (each weight matrix's change and its intruder
dimensions, without a forward pass), `provenance` (the data), `compare_evals`
(two lm-eval runs, base and fine-tune, paired by document), `finetune`,
`write_reports` (the report and the card, rebuilt from `AuditResult.read("summary.json")`),
`watch` (the cheap audit of every checkpoint of a run) and `build_zoo`, each with its config
and its result type; `RunConfig` (device, dtype, seed) is shared by every stage. The training
callback, `FinetraceCallback`, lives in `finetrace.integrations`, which imports `Trainer`.
Each name loads its module on first use: `import finetrace` costs no torch.
"""

from finetrace._util.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "finetrace.adl.amplify": (
            "AmplifiedSampling",
            "SampleConfig",
        ),
        "finetrace.adl.collect": ("CollectConfig",),
        "finetrace.adl.decode": ("DecodeConfig",),
        "finetrace.adl.score": ("ScoreConfig",),
        "finetrace.adl.steer": ("SteerConfig",),
        "finetrace.adl.records": (
            "DiffConfig",
            "DiffResult",
        ),
        "finetrace.errors": ("FinetraceError",),
        "finetrace.evals.behaviour": (
            "BEHAVIOUR_PROMPTS",
            "BehaviourConfig",
            "BehaviourResult",
            "behaviour",
        ),
        "finetrace.evals.benchmarks": ("BenchmarkComparison",),
        "finetrace.evals.drift": ("DriftConfig",),
        "finetrace.evals.facts": ("COMMON_FACTS",),
        "finetrace.evals.records": (
            "ForgetConfig",
            "ForgetResult",
        ),
        "finetrace.gates": (
            "Gate",
            "parse_gate",
        ),
        "finetrace.models.pair": (
            "ModelPair",
            "load_pair",
        ),
        "finetrace.papertrail.scan": ("ProvenanceConfig", "ProvenanceReport"),
        "finetrace.spectra.intruders": ("SpectraConfig",),
        "finetrace.spectra.records": ("WeightsResult",),
        "finetrace.report": ("write_reports",),
        "finetrace.results": ("AuditResult",),
        "finetrace.run": ("RunConfig",),
        "finetrace.train.config": (
            "FinetuneConfig",
            "LoraSettings",
            "TrainConfig",
        ),
        "finetrace.train.finetune": (
            "FinetuneResult",
            "finetune",
        ),
        "finetrace.verbs.audit": (
            "AuditConfig",
            "audit",
        ),
        "finetrace.verbs.compare_evals": ("compare_evals",),
        "finetrace.verbs.diff": ("diff",),
        "finetrace.verbs.forget": ("forget",),
        "finetrace.verbs.live": ("LiveWatch",),
        "finetrace.verbs.provenance": ("provenance",),
        "finetrace.verbs.sample": ("sample",),
        "finetrace.verbs.watch": ("watch",),
        "finetrace.verbs.weights": ("weights",),
        "finetrace.monitor.cheap": (
            "CheapTrace",
            "WatchConfig",
        ),
        "finetrace.monitor.series": ("WatchSeries",),
        "finetrace.zoo.build": (
            "Zoo",
            "build_zoo",
            "open_zoo",
        ),
    },
)
