"""Text encoders (BERT, DeBERTa-v2/v3) in Flax NNX with HF checkpoint loading."""
from glidre_jax.encoders.common import EncoderOutput
from glidre_jax.encoders.registry import (ENCODER_FAMILIES, config_from_hf,
                                          encoder_family, load_encoder,
                                          new_encoder)
