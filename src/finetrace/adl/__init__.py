"""The Activation Difference Lens (Minder et al. 2025, arXiv 2510.13900).

collect -> decode -> steer -> score: read what a fine-tune was about from the
mean difference of the fine-tuned and base residual streams on unrelated text.
"""
