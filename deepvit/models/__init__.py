"""ViT / DeepViT models (registered in timm's registry on import) and their complexity counters."""
from .attention import MAP_STAGES, Attention
from .complexity import count_params, gmacs_per_image, macs_per_image
from .deepvit import STEMS, DeepVisionTransformer, list_variants, resolve_reattn_blocks
from .reattention import REATTN_INITS, REATTN_NORMS, ReAttention, ReAttentionMix
from .stem import ConvPatchEmbed
