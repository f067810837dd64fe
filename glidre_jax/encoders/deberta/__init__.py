from glidre_jax.encoders.deberta.modeling import DebertaV2Config, DebertaV2Model
from glidre_jax.encoders.deberta.params import KEY_TABLE
