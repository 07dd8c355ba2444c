"""ViT / DeepViT / LayerScale / talking-heads / depth-scaled models (registered in timm's registry on import) and their
complexity counters."""
from .attention import MAP_STAGES, Attention
from .complexity import count_params, gmacs_per_image, macs_per_image
from .deepvit import (FAMILIES, STEMS, DeepVisionTransformer, model_family, model_remedy, resolve_blocks,
                      resolve_reattn_blocks)
from .variants import list_variants
from .head_mix import HEAD_MIX_INITS, HeadMix, mix_heads
from .reattention import (REATTN_INITS, REATTN_NORMS, REATTN_THETAS, WEIGHTS_FORMAT, ReAttention, ReAttentionMix,
                          upgrade_state_dict)
from .remedies import (RESIDUAL_SCALES, TALKINGHEAD_INITS, ResidualScale, TalkingHeadAttention,
                       cait_init_values, residual_branch_scale)
from .streams import remedy_generator
from .stem import ConvPatchEmbed
