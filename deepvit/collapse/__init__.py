"""Attention-collapse measurement (Zhou et al., 2021, arXiv 2103.11886, Sec. 3.2).

- :mod:`.maps`: every block's attention maps from one forward pass, at both stages (softmax / mixed).
- :mod:`.paper`: the paper metric — cross-layer similarity M^{p,q} (Eq. 4) and the similar-block count.
- :mod:`.calibrated`: the same measured against chance (token-permutation null), centred and head-averaged
  variants, and attention sharpness (effective keys), accumulated chunk by chunk.
- :mod:`.probe`: the probe a run executes: fixed images → every metric and count at both stages.
"""
from .calibrated import DEFAULT_PERMUTATIONS, HEADLINE, VARIANTS, CrossLayerAccumulator, calibrated_similarity, \
    effective_keys
from .maps import MAP_STAGES, attention_maps, attention_maps_by_stage, probe_maps
from .paper import DEFAULT_SIMILARITY_THRESHOLD, cross_layer_similarity, similar_adjacent_blocks, similar_blocks
from .probe import CollapseResult, collapse_probe, probe_chunk_size

__all__ = ['MAP_STAGES', 'attention_maps', 'attention_maps_by_stage', 'probe_maps', 'cross_layer_similarity',
           'similar_blocks', 'similar_adjacent_blocks', 'DEFAULT_SIMILARITY_THRESHOLD', 'VARIANTS', 'HEADLINE',
           'CrossLayerAccumulator', 'calibrated_similarity', 'effective_keys', 'DEFAULT_PERMUTATIONS',
           'CollapseResult', 'collapse_probe', 'probe_chunk_size']
