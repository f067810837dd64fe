"""DeBERTa-v2/v3 parity with transformers' PyTorch `DebertaV2Model`.

Small random configs covering every architectural switch real checkpoints
use; torch weights are perturbed away from HF's init (unit LayerNorms, tiny
std) so every tensor's mapping matters. Run with -s to see the max |Δ|.
"""
from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file
from transformers.models.deberta_v2 import modeling_deberta_v2 as hf_deberta

from glidre_jax import keymap, weights
from glidre_jax.encoders import load_encoder
from glidre_jax.encoders.deberta import KEY_TABLE, DebertaV2Config, DebertaV2Model
from glidre_jax.encoders.deberta import modeling, params

_SMALL = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=128, hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1)

CONFIGS = {
    # deberta-v3: shared keys, log buckets (span 8 << L=70), rel LayerNorm.
    "v3": dict(relative_attention=True, position_buckets=8,
               max_relative_positions=32, pos_att_type="p2c|c2p",
               share_att_key=True, norm_rel_ebd="layer_norm",
               position_biased_input=False, type_vocab_size=0),
    # deberta-v2 (xlarge-like but un-shared keys): conv branch, absolute
    # positions, token types, factorised embeddings, clipped raw distances.
    "v2": dict(relative_attention=True, position_buckets=-1,
               max_relative_positions=16, pos_att_type=["c2p", "p2c"],
               share_att_key=False, position_biased_input=True,
               type_vocab_size=2, embedding_size=24, attention_head_size=8,
               conv_kernel_size=3, conv_act="gelu"),
    # c2p only, grouped wide conv, buckets without rel LayerNorm.
    "c2p": dict(relative_attention=True, position_buckets=16,
                max_relative_positions=64, pos_att_type=["c2p"],
                share_att_key=False, position_biased_input=False,
                conv_kernel_size=5, conv_groups=4, conv_act="tanh"),
    # p2c only, max_relative_positions=-1 (-> max_position_embeddings=64).
    "p2c": dict(relative_attention=True, max_relative_positions=-1,
                max_position_embeddings=64, pos_att_type=["p2c"],
                share_att_key=False, position_biased_input=False),
    # No relative attention; pos_att_type still sets HF's score scale.
    "absolute": dict(relative_attention=False, pos_att_type="p2c|c2p",
                     position_biased_input=True, type_vocab_size=2),
}
LENGTHS = (7, 33, 70)
HIDDEN_TOL, ATTN_TOL = 1e-4, 1e-5


def _perturb(model: torch.nn.Module, seed: int) -> None:
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "LayerNorm.weight" in name:
        p.copy_(1 + 0.2 * noise)
      else:
        p.copy_(0.15 * noise)


def _torch_model(name: str) -> transformers.DebertaV2Model:
  torch.manual_seed(0)
  cfg = transformers.DebertaV2Config(**{**_SMALL, **CONFIGS[name]},
                                     attn_implementation="eager")
  model = transformers.DebertaV2Model(cfg)
  _perturb(model, seed=len(name))
  return model.eval()


_CACHE: dict = {}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  """name -> (torch model, checkpoint dir, our model in eval mode)."""
  def get(name: str):
    if name not in _CACHE:
      tm = _torch_model(name)
      path = tmp_path_factory.mktemp(f"deberta_{name}")
      tm.save_pretrained(path)
      ours = load_encoder(path)
      ours.eval()
      _CACHE[name] = tm, path, ours
    return _CACHE[name]
  return get


def _batch(length: int, seed: int = 0, type_vocab: int = 0):
  """Three right-padded rows of different real lengths, ids avoid pad 0."""
  rng = np.random.RandomState(seed + length)
  lengths = [length, max(1, length - 5), max(1, length // 2)]
  ids = rng.randint(1, _SMALL["vocab_size"], (3, length))
  mask = (np.arange(length)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
  ids = ids * mask
  types = (rng.randint(0, type_vocab, ids.shape) * mask if type_vocab
           else np.zeros_like(ids))
  return ids, mask, types


def _run_both(tm, ours, ids, mask, types, **torch_kwargs):
  with torch.no_grad():
    ref = tm(torch.tensor(ids), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(types), output_attentions=True,
             **torch_kwargs)
  out = ours(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
  return ref, out


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity(pair, name, length):
  tm, _, ours = pair(name)
  ids, mask, types = _batch(length, type_vocab=tm.config.type_vocab_size)
  ref, out = _run_both(tm, ours, ids, mask, types)
  real = mask.astype(bool)
  d_hidden = np.abs(np.asarray(out.last_hidden_state)
                    - ref.last_hidden_state.numpy())[real].max()
  attn = np.asarray(out.attentions)
  assert attn.dtype == np.float32 and attn.shape == (3, 4, length, length)
  # Rows of real queries; padded rows follow HF too (uniform), checked below.
  d_attn = np.abs(attn - ref.attentions[-1].numpy())
  d_attn_real = d_attn.transpose(0, 2, 1, 3)[real].max()
  d_attn_all = d_attn.max()
  print(f"\n[deberta {name:8s} L={length:2d}] max|dh|={d_hidden:.2e} "
        f"max|dA|={d_attn_real:.2e} (all rows {d_attn_all:.2e})")
  assert d_hidden <= HIDDEN_TOL
  assert d_attn_real <= ATTN_TOL
  assert d_attn_all <= ATTN_TOL


@pytest.mark.parametrize("name", ["v2", "v3"])
def test_per_layer_parity(pair, name):
  """Embeddings and each layer's output (conv branch after layer 0)."""
  tm, _, ours = pair(name)
  ids, mask, types = _batch(33, seed=1, type_vocab=tm.config.type_vocab_size)
  with torch.no_grad():
    ref = tm(torch.tensor(ids), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(types), output_hidden_states=True)
  real = mask.astype(bool)
  enc = ours.encoder
  x = ours.embeddings(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
  deltas = [np.abs(np.asarray(x) - ref.hidden_states[0].numpy())[real].max()]
  keep = jnp.asarray(real)
  pair_mask = keep[:, None, :, None] & keep[:, None, None, :]
  rel_pos = modeling.relative_positions(ids.shape[1], ours.config)
  rel_emb = enc.get_rel_embedding()
  first = x
  for i, layer in enumerate(enc.layer):
    x, _ = layer(x, pair_mask, rel_pos, rel_emb)
    if i == 0 and enc.conv is not None:
      x = enc.conv(first, x, jnp.asarray(mask))
    deltas.append(np.abs(np.asarray(x) - ref.hidden_states[i + 1].numpy())[real].max())
  print(f"\n[deberta {name} per layer] " + " ".join(f"{d:.1e}" for d in deltas))
  assert max(deltas) <= HIDDEN_TOL


@pytest.mark.parametrize("bucket,max_position", [(256, 512), (8, 32), (16, 64)])
def test_log_buckets_match_hf(bucket, max_position):
  rel = np.arange(-4096, 4097)
  ref = hf_deberta.make_log_bucket_position(torch.tensor(rel), bucket, max_position)
  np.testing.assert_array_equal(
      modeling.log_bucket_position(rel, bucket, max_position), ref.long().numpy())
  cfg = DebertaV2Config(relative_attention=True, position_buckets=bucket,
                        max_relative_positions=max_position)
  hf_rel = hf_deberta.build_relative_position(torch.zeros(1, 300, 1),
                                              torch.zeros(1, 300, 1),
                                              bucket, max_position)[0]
  np.testing.assert_array_equal(np.asarray(modeling.relative_positions(300, cfg)),
                                hf_rel.numpy())


def test_jit_matches_eager(pair):
  _, _, ours = pair("v3")
  ids, mask, types = _batch(33)
  eager = ours(jnp.asarray(ids), jnp.asarray(mask))
  jitted = nnx.jit(lambda m, i, a: m(i, a))(ours, jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_allclose(jitted.last_hidden_state, eager.last_hidden_state,
                             atol=1e-5)
  np.testing.assert_allclose(jitted.attentions, eager.attentions, atol=1e-6)


@pytest.mark.parametrize("name", ["v2", "v3"])
def test_bf16_compute_close(pair, name):
  tm, path, _ = pair(name)
  ours = load_encoder(path, dtype=jnp.bfloat16)
  ours.eval()
  ids, mask, types = _batch(33, type_vocab=tm.config.type_vocab_size)
  ref, out = _run_both(tm, ours, ids, mask, types)
  assert out.last_hidden_state.dtype == jnp.bfloat16
  assert out.attentions.dtype == jnp.float32
  real = mask.astype(bool)
  want = ref.last_hidden_state.numpy()[real]
  got = np.asarray(out.last_hidden_state, np.float32)[real]
  rel_err = np.abs(got - want).max() / np.abs(want).max()
  d_attn = np.abs(np.asarray(out.attentions) - ref.attentions[-1].numpy()).max()
  print(f"\n[deberta {name} bf16] max|dh|/max|h|={rel_err:.2e} max|dA|={d_attn:.2e}")
  assert rel_err <= 5e-2
  assert d_attn <= 5e-2


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_key_table_round_trip(pair, name):
  """Our params map back to exactly the torch state dict (export direction)."""
  tm, _, ours = pair(name)
  exported = keymap.convert_to_torch(KEY_TABLE, weights.flat_params(ours))
  state = {k: v.numpy() for k, v in tm.state_dict().items()
           if not KEY_TABLE.ignored(k)}
  assert sorted(exported) == sorted(state)
  for key, value in state.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_renamed_tensor_names_both_keys(pair, tmp_path):
  _, path, _ = pair("v3")
  state = load_file(str(path / "model.safetensors"))
  old = "encoder.layer.1.attention.self.query_proj.weight"
  new = "encoder.layer.1.attention.self.q_proj.weight"
  state[new] = state.pop(old)
  save_file(state, str(tmp_path / "model.safetensors"))
  shutil.copy(path / "config.json", tmp_path / "config.json")
  with pytest.raises(keymap.CheckpointMismatchError) as err:
    load_encoder(tmp_path)
  message = str(err.value)
  assert new in message  # the unexpected key
  assert "encoder.layer.1.attention.self.query_proj.kernel" in message  # missing
  assert old in message  # ...named by its torch key too


def test_config_from_hf_json(pair):
  _, path, ours = pair("v3")
  hf = json.loads((path / "config.json").read_text())
  cfg = DebertaV2Config.from_hf({**hf, "pos_att_type": "P2C | c2p"})
  assert cfg.pos_att_type == ("p2c", "c2p")
  assert cfg.model_type == "deberta-v2" and ours.config.att_span == 8
  assert DebertaV2Config(pos_att_type=None).pos_att_type == ()
  with pytest.raises(ValueError, match="pos_att_type"):
    DebertaV2Config(pos_att_type="c2p|x2y")


def test_unused_position_table_dropped():
  cfg = DebertaV2Config.deberta_v3_base()
  state = {params.UNUSED_POSITION_TABLE: 0, "embeddings.LayerNorm.weight": 1}
  assert params.UNUSED_POSITION_TABLE not in params.drop_unused(cfg, state)
  biased = DebertaV2Config(position_biased_input=True)
  assert params.UNUSED_POSITION_TABLE in params.drop_unused(biased, state)


# Published sizes (microsoft/DeBERTa README): backbone + 128k-vocab embedding.
@pytest.mark.parametrize("preset,millions", [
    ("deberta_v3_small", 44 + 98), ("deberta_v3_base", 86 + 98),
    ("deberta_v3_large", 304 + 131), ("deberta_v2_xlarge", 900)])
def test_presets_match_hf_structure(preset, millions):
  cfg = getattr(DebertaV2Config, preset)()
  abstract = nnx.eval_shape(lambda: DebertaV2Model(cfg, rngs=nnx.Rngs(0)))
  shapes = weights.param_shapes(abstract)
  hf_cfg = transformers.DebertaV2Config(**{
      k: list(v) if isinstance(v, tuple) else v
      for k, v in vars(cfg).items() if v is not None})
  with torch.device("meta"):
    hf = transformers.DebertaV2Model(hf_cfg)
  hf_shapes = {}
  for key, value in hf.state_dict().items():
    if not KEY_TABLE.ignored(key):
      path, transform = KEY_TABLE.to_ours(key)
      flip = transform.name in ("linear", "conv1d")  # both reverse the axes
      hf_shapes[path] = tuple(value.shape)[::-1] if flip else tuple(value.shape)
  assert shapes == hf_shapes
  total = sum(int(np.prod(s)) for s in shapes.values()) / 1e6
  print(f"\n[{preset}] {total:.0f}M params")
  assert abs(total - millions) / millions < 0.03
