"""Model organisms: a base model and narrow fine-tunes with known ground truth.

Its names load on first use, so that reading the organisms' list loads no torch.
"""

from finetrace._util.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "finetrace.zoo.build": ("Zoo", "build_zoo", "open_zoo", "zoo_for"),
        "finetrace.zoo.organisms": ("ORGANISMS", "Organism", "get_organism"),
        "finetrace.zoo.recipe": ("PRESETS", "Preset"),
    },
)
