"""ViT / DeepViT / LayerScale / talking-heads / depth-scaled models (registered in timm's registry on import) and their
complexity counters."""
from .attention import MAP_STAGES, Attention
from .complexity import count_params, gmacs_per_image, macs_per_image
from .deepvit import (FAMILIES, STEMS, DeepVisionTransformer, model_family, model_remedy, resolve_blocks,
                      resolve_reattn_blocks)
from .variants import list_variants
from .reattention import REATTN_INITS, REATTN_NORMS, ReAttention, ReAttentionMix
from .remedies import (REATTN_THETAS, RESIDUAL_SCALES, TALKINGHEAD_INITS, HeadMix, ResidualScale,
                       TalkingHeadAttention, cait_init_values, remedy_generator, residual_branch_scale)
from .stem import ConvPatchEmbed
