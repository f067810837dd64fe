"""Our Flax NNX BERT against transformers' PyTorch BertModel (fp32)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from glidre_jax import keymap
from glidre_jax.encoders import load_encoder

HIDDEN_TOL, ATTN_TOL = 1e-4, 1e-5


def _torch_outputs(model, ids, mask):
  with torch.no_grad():
    out = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                output_attentions=True)
  return out.last_hidden_state.numpy(), out.attentions[-1].numpy()


def _max_deltas(ours, theirs_hidden, theirs_attn, mask):
  real = mask.astype(bool)
  hidden = np.abs(np.asarray(ours.last_hidden_state) - theirs_hidden)[real].max()
  # Attention rows of padded queries are meaningless in both; compare real rows.
  attn = np.abs(np.asarray(ours.attentions) - theirs_attn)
  attn = attn.transpose(0, 2, 1, 3)[real].max()
  return hidden, attn


def _random_batch(rng, vocab, lengths):
  seq = max(lengths)
  ids = rng.randint(1, vocab, (len(lengths), seq))
  mask = (np.arange(seq)[None] < np.array(lengths)[:, None]).astype(np.int64)
  return ids * mask, mask


@pytest.mark.parametrize("cfg", [
    dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
         intermediate_size=64),
    dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
         intermediate_size=96, hidden_act="gelu_new"),
], ids=["gelu", "gelu_new"])
@pytest.mark.parametrize("lengths", [[7], [33, 20, 5]], ids=["single", "padded"])
def test_random_bert_matches_torch(tmp_path, cfg, lengths):
  torch.manual_seed(0)
  hf_cfg = transformers.BertConfig(vocab_size=99, max_position_embeddings=64,
                                    attn_implementation="eager", **cfg)
  torch_model = transformers.BertModel(hf_cfg).eval()
  torch_model.save_pretrained(tmp_path)
  ours = load_encoder(tmp_path)
  ours.eval()
  ids, mask = _random_batch(np.random.RandomState(1), 99, lengths)
  hidden, attn = _max_deltas(ours(jnp.asarray(ids), jnp.asarray(mask)),
                             *_torch_outputs(torch_model, ids, mask), mask)
  print(f"bert {hf_cfg.hidden_act} h={hf_cfg.hidden_size} {lengths}: hidden {hidden:.2e} attn {attn:.2e}")
  assert hidden <= HIDDEN_TOL and attn <= ATTN_TOL


def _tokenized_docs(minilm_dir, path, n):
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
  docs = json.loads(path.read_text())[:n]
  encoded = [tokenizer([w for s in d["sents"] for w in s], is_split_into_words=True,
                       truncation=True, max_length=512)["input_ids"] for d in docs]
  seq = max(len(e) for e in encoded)
  ids = np.zeros((n, seq), np.int64)
  mask = np.zeros((n, seq), np.int64)
  for i, e in enumerate(encoded):
    ids[i, :len(e)], mask[i, :len(e)] = e, 1
  return ids, mask


def test_minilm_checkpoint_matches_torch_on_redocred(minilm_dir, redocred_dev_path):
  ids, mask = _tokenized_docs(minilm_dir, redocred_dev_path, 3)
  torch_model = transformers.BertModel.from_pretrained(
      str(minilm_dir), attn_implementation="eager").eval()
  ours = load_encoder(minilm_dir)
  ours.eval()
  hidden, attn = _max_deltas(ours(jnp.asarray(ids), jnp.asarray(mask)),
                             *_torch_outputs(torch_model, ids, mask), mask)
  print(f"minilm on 3 Re-DocRED docs (L={ids.shape[1]}): hidden {hidden:.2e} attn {attn:.2e}")
  assert hidden <= HIDDEN_TOL and attn <= ATTN_TOL


def test_padding_invariance(minilm_dir, redocred_dev_path):
  ids, mask = _tokenized_docs(minilm_dir, redocred_dev_path, 3)
  ours = load_encoder(minilm_dir)
  ours.eval()
  pad = 16  # extra bucket padding on top of the batch's own padding
  ids_p = np.pad(ids, ((0, 0), (0, pad)))
  mask_p = np.pad(mask, ((0, 0), (0, pad)))
  batched = ours(jnp.asarray(ids_p), jnp.asarray(mask_p))
  for i in range(len(ids)):
    n = int(mask[i].sum())
    alone = ours(jnp.asarray(ids[i:i + 1, :n]), jnp.asarray(mask[i:i + 1, :n]))
    np.testing.assert_allclose(batched.last_hidden_state[i, :n],
                               alone.last_hidden_state[0], atol=1e-5)
    np.testing.assert_allclose(batched.attentions[i, :, :n, :n],
                               alone.attentions[0], atol=1e-6)
    assert float(jnp.abs(batched.attentions[i, :, :n, n:]).max()) == 0.0


def test_no_retrace_for_same_bucket_shape(minilm_dir):
  from flax import nnx
  ours = load_encoder(minilm_dir)
  ours.eval()
  graphdef, state = nnx.split(ours)
  traces = []

  @jax.jit
  def forward(state, ids, mask):
    traces.append(ids.shape)
    return nnx.merge(graphdef, state)(ids, mask).last_hidden_state

  rng = np.random.RandomState(0)
  for lengths in ([30, 12], [64, 64], [5, 40]):
    ids, mask = _random_batch(rng, 30000, lengths)
    ids, mask = np.pad(ids, ((0, 0), (0, 64 - ids.shape[1]))), np.pad(mask, ((0, 0), (0, 64 - mask.shape[1])))
    forward(state, ids, mask).block_until_ready()
  assert len(traces) == 1
  forward(state, *_random_batch(rng, 30000, [100, 3])).block_until_ready()
  assert len(traces) == 2  # a new bucket shape traces once more


def test_checkpoint_with_misnamed_tensor_names_both_keys(tmp_path, minilm_dir):
  from safetensors.numpy import load_file, save_file
  state = load_file(str(minilm_dir / "model.safetensors"))
  state["encoder.layer.2.attention.self.qeury.weight"] = state.pop(
      "encoder.layer.2.attention.self.query.weight")
  save_file(state, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text((minilm_dir / "config.json").read_text())
  with pytest.raises(keymap.CheckpointMismatchError) as err:
    load_encoder(tmp_path)
  assert "encoder.layer.2.attention.self.qeury.weight" in str(err.value)
  assert "encoder.layer.2.attention.self.query.kernel" in str(err.value)


def test_checkpoint_with_missing_tensor(tmp_path, minilm_dir):
  from safetensors.numpy import load_file, save_file
  state = load_file(str(minilm_dir / "model.safetensors"))
  del state["encoder.layer.5.output.LayerNorm.bias"]
  save_file(state, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text((minilm_dir / "config.json").read_text())
  with pytest.raises(keymap.CheckpointMismatchError, match=r"encoder\.layer\.5\.output\.LayerNorm\.bias"):
    load_encoder(tmp_path)


def test_bf16_compute_stays_close(minilm_dir, redocred_dev_path):
  ids, mask = _tokenized_docs(minilm_dir, redocred_dev_path, 1)
  fp32 = load_encoder(minilm_dir)
  bf16 = load_encoder(minilm_dir, dtype=jnp.bfloat16)
  fp32.eval(), bf16.eval()
  a = fp32(jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state
  b = bf16(jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state
  assert b.dtype == jnp.bfloat16
  rel = float(jnp.linalg.norm(a - b.astype(jnp.float32)) / jnp.linalg.norm(a))
  assert rel < 5e-2
