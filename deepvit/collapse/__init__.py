"""Attention-collapse measurement (Zhou et al., 2021, arXiv 2103.11886, Sec. 3.2), and the representation measures
that tell its kinds apart.

- :mod:`.maps`: every block's attention maps from one forward pass, at both stages (softmax / mixed).
- :mod:`.paper`: the paper metric — cross-layer similarity M^{p,q} (Eq. 4) and the similar-block count.
- :mod:`.calibrated`: cross-layer similarity against chance, column-wise and row-wise (the headline, ``row``), with a
  token-permutation and an image-permutation null, per image (for bootstrap intervals).
- :mod:`.sharpness`: normalised attention entropy per block and head; effective keys.
- :mod:`.representation`: token uniformity of the block outputs and debiased linear CKA between blocks.
- :mod:`.summary`: per-block profiles and adjacent-pair summaries.
- :mod:`.probe`: the probe a run executes: fixed images → every measure, profile and interval at both stages.

Which measure answers which question: ``docs/collapse.md``.
"""
from .calibrated import DEFAULT_PERMUTATIONS, HEADLINE, MEASURES, VARIANTS, CrossLayerAccumulator, \
    calibrated_similarity
from .maps import MAP_STAGES, attention_maps, attention_maps_by_stage, probe_maps
from .paper import DEFAULT_SIMILARITY_THRESHOLD, cross_layer_similarity, similar_adjacent_blocks, similar_blocks
from .probe import (DEFAULT_BOOTSTRAP, MIN_PROBE_IMAGES, CollapseResult, collapse_probe, probe_budget_mib,
                    probe_chunk_size)
from .representation import DEFAULT_CKA_EXAMPLES, debiased_cka_matrix, linear_cka, token_uniformity
from .sharpness import attention_entropy, effective_keys

__all__ = ['MAP_STAGES', 'attention_maps', 'attention_maps_by_stage', 'probe_maps', 'cross_layer_similarity',
           'similar_blocks', 'similar_adjacent_blocks', 'DEFAULT_SIMILARITY_THRESHOLD', 'VARIANTS', 'MEASURES',
           'HEADLINE', 'CrossLayerAccumulator', 'calibrated_similarity', 'effective_keys', 'attention_entropy',
           'DEFAULT_PERMUTATIONS', 'CollapseResult', 'collapse_probe', 'probe_chunk_size', 'probe_budget_mib',
           'DEFAULT_BOOTSTRAP', 'MIN_PROBE_IMAGES', 'token_uniformity', 'linear_cka', 'debiased_cka_matrix', 'DEFAULT_CKA_EXAMPLES']
