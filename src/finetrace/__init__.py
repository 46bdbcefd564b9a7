"""finetrace: what did your fine-tune do to the model?

The public API mirrors the CLI: `finetune` builds narrow fine-tunes, `build_zoo`
builds the model organisms the demo, the tests and the benchmarks run on.
"""

from finetrace.errors import FinetraceError
from finetrace.finetune import FinetuneConfig, FinetuneResult, LoraSettings, finetune
from finetrace.training import TrainConfig
from finetrace.zoo import Zoo, build_zoo, open_zoo

__all__ = [
    "FinetraceError",
    "FinetuneConfig",
    "FinetuneResult",
    "LoraSettings",
    "TrainConfig",
    "Zoo",
    "build_zoo",
    "finetune",
    "open_zoo",
]
