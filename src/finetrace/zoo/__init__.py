"""Model organisms: a tiny base model and narrow fine-tunes with known ground truth."""

from finetrace.zoo.build import Zoo, build_zoo, open_zoo, zoo_for
from finetrace.zoo.organisms import ORGANISMS, Organism, get_organism
from finetrace.zoo.recipe import PRESETS, Preset

__all__ = ["ORGANISMS", "PRESETS", "Organism", "Preset", "Zoo", "build_zoo", "get_organism", "open_zoo", "zoo_for"]
