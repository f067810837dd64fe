from glidre_jax.encoders.bert.modeling import BertConfig, BertModel
from glidre_jax.encoders.bert.params import KEY_TABLE
