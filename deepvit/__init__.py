"""DeepViT scaling study: ViT / DeepViT models in timm's registry, attention-collapse probes, data and training glue.

``import deepvit`` registers the model variants with timm (``timm.create_model('deepvit_32b_patch16_224')``).
"""
from . import models  # noqa: F401  (registers the variants)

__version__ = '0.1.0'
