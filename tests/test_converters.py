"""Converters to/from the official PyTorch GLiDRE layout, against our torch oracle.

Real Re-DocRED dev documents (truncated to 64-128 subwords) and MiniLM encoders;
the text encoder is perturbed so that exported weights are ours, not MiniLM's.
"""
from __future__ import annotations

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from converters import official
from converters.export_encoder import export_text_encoder
from converters.export_official import export_glidre
from converters.import_official import import_glidre
from converters.import_official import main as import_main
from converters.torch_glidre import TorchGLiDRE
from glidre_jax import encoders, keymap, weights
from glidre_jax.data import featurize as featurize_lib, pairs
from glidre_jax.data.readers import read_docred
from glidre_jax.data.relations import RelationSchema
from glidre_jax.data.assets import asset_path
from glidre_jax.data.tokenize import load_tokenizer
from glidre_jax.model.config import GLiDREConfig
from glidre_jax.model import glidre
from glidre_jax.model.glidre import GLiDREModel, build_glidre

TOL = 1e-4  # fp32 logits
NUM_LABELS = 12  # label encoding dominates the cost: a subset of the 96 names
# (hidden_size, lop, pooling): LOP on / off, both poolings; hidden != 384 adds
# projection + labels_projection, 384 (MiniLM's width) has neither.
VARIANTS = [(512, True, "mean"), (256, False, "logsumexp"), (384, True, "logsumexp")]
VARIANT_IDS = [f"d{d}-{'lop' if lop else 'nolop'}-{pool}" for d, lop, pool in VARIANTS]


class _NotAStateDict:
  """A pickled object that weights_only loading must refuse."""


@pytest.fixture(scope="module")
def batch(minilm_dir, redocred_dev_path):
  schema = RelationSchema.from_file(asset_path("docred", "rel_info.json"))
  docs = sorted(read_docred(redocred_dev_path, schema), key=lambda d: d.num_words)[:3]
  tok = load_tokenizer(minilm_dir)
  index = {name: k for k, name in enumerate(schema.names)}
  # Different truncations: subword, word and entity padding all occur.
  feats = [featurize_lib.featurize(d, tok, index, n) for d, n in zip(docs, (128, 96, 64))]
  full = featurize_lib.collate(feats, featurize_lib.Buckets((128,), (128,), (32,)),
                               featurize_lib.label_batch(tok, list(schema.names)))
  full.pop("pair_labels")  # gold facts over all 96 names; the models never read them
  full.update(featurize_lib.label_batch(tok, list(schema.names)[:NUM_LABELS], num_labels=16))
  return full


@pytest.fixture(scope="module")
def minilm_encoders(minilm_dir):
  """(text, label) MiniLM encoders; the text one nudged off the checkpoint."""
  text = encoders.load_encoder(minilm_dir)
  label = encoders.load_encoder(minilm_dir)
  params = nnx.state(text, nnx.Param)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  nnx.update(text, jax.tree.unflatten(tree, [
      x + 0.01 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]))
  return text, label


@nnx.jit
def _forward(model, batch):
  # One compilation beats eager op-by-op dispatch here; the packed pairs'
  # dense view compares with the oracle's every-pair logits.
  return glidre.dense(model(batch).logits, batch)


@nnx.jit
def _encode(encoder, ids, mask):
  return encoder(ids, mask).last_hidden_state


@nnx.jit
def _forward_with_threshold(model, batch):
  out = model(batch)
  return glidre.dense(out.logits, batch), glidre.dense(out.threshold_logits, batch)


def _jax_logits(model, batch) -> np.ndarray:
  model.eval()
  return np.asarray(_forward(model, {k: jnp.asarray(v) for k, v in batch.items()}))


def _torch_logits(model: TorchGLiDRE, batch) -> np.ndarray:
  with torch.no_grad():
    return model.eval()(batch).numpy()


def _max_delta(a: np.ndarray, b: np.ndarray, batch) -> float:
  """max |a - b| over real documents' candidate pairs and real labels."""
  keep = (pairs.dense_pair_mask(batch)[..., None] * batch["label_mask"]).astype(bool)
  keep &= batch["doc_mask"].astype(bool)[:, None, None, None]
  return float(np.abs(a - b)[keep].max())


@pytest.fixture(scope="module")
def exported(minilm_encoders, minilm_dir, tmp_path_factory):
  """variant -> (JAX model, its exported official directory); built lazily."""
  cache = {}

  def get(variant):
    if variant not in cache:
      hidden, lop, pooling = variant
      text, label = minilm_encoders
      model = GLiDREModel(GLiDREConfig(hidden_size=hidden, lop=lop, pooling=pooling),
                     nnx.clone(text), nnx.clone(label), rngs=nnx.Rngs(hidden + lop))
      out = tmp_path_factory.mktemp("official")
      export_glidre(model, out, minilm_dir, minilm_dir)
      cache[variant] = (model, out)
    return cache[variant]
  return get


def _assert_same_params(ours: nnx.Module, back: nnx.Module):
  a, b = weights.flat_params(ours), weights.flat_params(back)
  assert set(a) == set(b)
  differ = [k for k in a if not np.array_equal(np.asarray(a[k]), np.asarray(b[k]))]
  assert not differ, f"not bit-exact: {differ}"


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[2]], ids=[VARIANT_IDS[0],
                                                                   VARIANT_IDS[2]])
def test_round_trip_is_bit_exact(exported, variant):
  model, out = exported(variant)
  names = {p.name for p in out.iterdir()}
  assert {official.CONFIG_FILE, official.TORCH_BIN, official.SAFETENSORS, "tokenizer.json",
          "text_encoder", "labels_encoder"} <= names
  # Both weight files hold the same official keys; no `model.` prefix.
  st = weights.read_state_dict(out / official.SAFETENSORS)
  pt = weights.read_state_dict(out / official.TORCH_BIN)
  assert set(st) == set(pt) and all(np.array_equal(st[k], pt[k]) for k in st)
  assert "prompt_rep_layer.0.weight" in st and not any(k.startswith("model.") for k in st)
  has_projection = variant[0] != 384
  assert ("token_rep_layer.projection.weight" in st) == has_projection
  assert ("token_rep_layer.labels_projection.weight" in st) == has_projection
  cfg = official.read_config(out)
  assert (cfg["hidden_size"], cfg["atlop"], cfg["pooling"], cfg["has_rnn"]) == (
      variant[0], variant[1], variant[2], False)
  # What the official loader reads the tokenizers from.
  transformers.AutoTokenizer.from_pretrained(out)
  transformers.AutoTokenizer.from_pretrained(cfg["labels_encoder"])
  _assert_same_params(model, import_glidre(out))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_exported_model_matches_torch(exported, batch, variant):
  model, out = exported(variant)
  theirs = _torch_logits(TorchGLiDRE.from_pretrained(out), batch)
  delta = _max_delta(_jax_logits(model, batch), theirs, batch)
  print(f"export {variant}: max |Δ logits| = {delta:.2e} (|logits| <= "
        f"{np.abs(theirs).max():.2f})")
  assert delta <= TOL


def _check_exported_encoder(model, encoder_dir, out, batch, tag):
  """export_text_encoder -> AutoModel loads every weight and matches ours."""
  export_text_encoder(model, out, encoder_dir)
  hf, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True,
                                                    attn_implementation="eager")
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  model.eval()
  ids, mask = batch["input_ids"], batch["attention_mask"]
  with torch.no_grad():
    theirs = hf.eval()(input_ids=torch.tensor(ids).long(),
                       attention_mask=torch.tensor(mask).long()).last_hidden_state.numpy()
  ours = np.asarray(_encode(model.token_rep_layer.bert_layer.model, jnp.asarray(ids),
                           jnp.asarray(mask)))
  delta = float(np.abs(ours - theirs)[mask.astype(bool)].max())
  print(f"exported {tag} encoder: max |Δ hidden| = {delta:.2e}")
  assert delta <= TOL


def test_exported_encoder_loads_in_automodel(exported, batch, minilm_dir, tmp_path):
  _check_exported_encoder(exported(VARIANTS[0])[0], minilm_dir, tmp_path / "enc", batch,
                          "MiniLM")


def _oracle(text_hf, label_hf, hidden=512, lop=True, pooling="mean", seed=0,
            adaptive_threshold=False):
  torch.manual_seed(seed)
  cfg = official.official_config(dict(hidden_size=hidden, dropout=0.4, pooling=pooling, lop=lop,
                                      adaptive_threshold=adaptive_threshold),
                                 "text", "labels", text_hf, label_hf)
  return TorchGLiDRE(cfg, text_hf, label_hf).eval()


def test_import_of_torch_written_checkpoint(batch, minilm_dir, tiny_dirs, tmp_path):
  text_hf = encoders.common.read_hf_config(minilm_dir)
  label_hf = encoders.common.read_hf_config(tiny_dirs["bert"])  # small: label encoding is costly
  oracle = _oracle(text_hf, label_hf, hidden=320, lop=True, pooling="logsumexp")
  out = oracle.save_pretrained(tmp_path / "torch_glidre", minilm_dir, tiny_dirs["bert"])
  assert not (out / official.SAFETENSORS).exists()  # the official default: .bin only
  ours = import_glidre(out)
  delta = _max_delta(_jax_logits(ours, batch), _torch_logits(oracle, batch), batch)
  print(f"import of a torch-written checkpoint: max |Δ logits| = {delta:.2e}")
  assert delta <= TOL


@pytest.fixture(scope="module")
def tiny_dirs(minilm_dir, tmp_path_factory):
  """Small random HF encoders (BERT, DeBERTa-v3-style) with MiniLM's tokenizer."""
  dirs = {}
  torch.manual_seed(0)
  common = dict(vocab_size=30522, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=96, max_position_embeddings=128)
  for name, model in (
      ("bert", transformers.BertModel(transformers.BertConfig(hidden_size=32, **common))),
      ("deberta", transformers.DebertaV2Model(transformers.DebertaV2Config(
          hidden_size=48, relative_attention=True, position_buckets=16, share_att_key=True,
          pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", max_relative_positions=-1,
          position_biased_input=False, type_vocab_size=0, **common)))):
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    official.copy_tokenizer(minilm_dir, path)
    dirs[name] = path
  return dirs


def test_deberta_text_encoder_round_trip_and_parity(tiny_dirs, batch, tmp_path):
  text_cfg = encoders.config_from_hf(encoders.common.read_hf_config(tiny_dirs["deberta"]))
  label_cfg = encoders.config_from_hf(encoders.common.read_hf_config(tiny_dirs["bert"]))
  model = build_glidre(GLiDREConfig(hidden_size=64), text_cfg, label_cfg, seed=3)
  out = export_glidre(model, tmp_path / "official", tiny_dirs["deberta"], tiny_dirs["bert"])
  _assert_same_params(model, import_glidre(out))
  delta = _max_delta(_jax_logits(model, batch),
                     _torch_logits(TorchGLiDRE.from_pretrained(out), batch), batch)
  print(f"deberta text encoder: max |Δ logits| = {delta:.2e}")
  assert delta <= TOL
  _check_exported_encoder(model, tiny_dirs["deberta"], tmp_path / "enc", batch, "DeBERTa")


@pytest.fixture(scope="module")
def tiny_export(tiny_dirs, tmp_path_factory):
  cfg = encoders.config_from_hf(encoders.common.read_hf_config(tiny_dirs["bert"]))
  model = build_glidre(GLiDREConfig(hidden_size=40), cfg, cfg, seed=1)
  out = tmp_path_factory.mktemp("tiny_official")
  export_glidre(model, out, tiny_dirs["bert"], tiny_dirs["bert"], safetensors=False)
  return out


def _copy_with(tiny_export, tmp_path, edit):
  """A copy of the tiny export whose state dict went through `edit`."""
  out = tmp_path / "edited"
  shutil.copytree(tiny_export, out)
  state = weights.read_state_dict(out)
  edit(state)
  official.write_weights(out, state, safetensors=False)
  return out


@pytest.mark.parametrize("edit,expected", [
    (lambda s: s.update({"span_rep_layer.bogus.weight": np.zeros(3, np.float32)}),
     [r"unmapped keys in the checkpoint: span_rep_layer\.bogus\.weight"]),
    (lambda s: s.update({"prompt_rep_layer.1.weight": s.pop("prompt_rep_layer.0.weight")}),
     [r"unmapped keys.*prompt_rep_layer\.1\.weight",
      r"missing.*prompt_rep_layer\.dense_in\.kernel \(torch key prompt_rep_layer\.0\.weight\)"]),
    (lambda s: s.pop("span_rep_layer.projection.3.bias"),
     [r"parameters missing from the checkpoint: .*span_rep_layer\.projection\.3\.bias"]),
    (lambda s: s.update({"token_rep_layer.projection.weight": np.zeros((40, 7), np.float32)}),
     [r"shape mismatches: token_rep_layer\.projection\.weight -> "
      r"token_rep_layer\.projection\.kernel: \(7, 40\) != \(32, 40\)"]),
], ids=["extra", "misnamed", "missing", "shape"])
def test_mismatched_state_dict_names_the_keys(tiny_export, tmp_path, edit, expected):
  with pytest.raises(keymap.CheckpointMismatchError) as err:
    import_glidre(_copy_with(tiny_export, tmp_path, edit))
  for pattern in expected:
    assert re.search(pattern, str(err.value)), str(err.value)


@pytest.mark.parametrize("payload,message", [
    ([torch.zeros(2)], "expected a dict of tensors, got list"),
    ({"prompt_rep_layer.0.weight": 3}, "expected a dict of tensors"),
    (_NotAStateDict(), "not a plain torch state dict loadable with weights_only=True"),
], ids=["list", "non-tensor", "object"])
def test_pickle_that_is_not_a_state_dict(tiny_export, tmp_path, payload, message):
  out = tmp_path / "pickle"
  shutil.copytree(tiny_export, out)
  torch.save(payload, out / official.TORCH_BIN)
  with pytest.raises(weights.CheckpointError, match=message):
    import_glidre(out)


def test_unsupported_encoder_and_options(tiny_export, tmp_path):
  out = tmp_path / "roberta"
  shutil.copytree(tiny_export, out)
  hf_path = out / "text_encoder" / "config.json"
  hf_path.write_text(json.dumps(json.loads(hf_path.read_text()) | {"model_type": "roberta"}))
  with pytest.raises(ValueError, match="unsupported encoder model_type 'roberta'"):
    import_glidre(out)
  with pytest.raises(ValueError, match="unsupported encoder model_type 'roberta'"):
    TorchGLiDRE.from_pretrained(out)
  out = tmp_path / "cross"
  shutil.copytree(tiny_export, out)
  official.write_config(out, official.read_config(out) | {"cross_attention": True})
  with pytest.raises(official.UnsupportedCheckpointError, match=r"cross_attention=True"):
    import_glidre(out)


def _threshold_delta(ours, oracle, batch) -> tuple[float, float]:
  """max |Δ| of (relation logits, threshold logits) over real pairs and labels."""
  ours.eval()
  model_logits, model_th = (np.asarray(x) for x in _forward_with_threshold(
      ours, {k: jnp.asarray(v) for k, v in batch.items()}))
  with torch.no_grad():
    logits, th = (x.numpy() for x in oracle.eval()(batch, with_threshold=True))
  scored = pairs.dense_pair_mask(batch) & batch["doc_mask"].astype(bool)[:, None, None]
  return _max_delta(model_logits, logits, batch), float(np.abs(model_th - th)[scored].max())


def test_adaptive_threshold_export_round_trip_and_parity(tiny_dirs, batch, tmp_path):
  """Our threshold head is the official threshold_layer: exported under
  threshold_layer.{0,3}, with loss='atloss' so the official model builds it;
  the torch oracle (official semantics: the mean of the real labels' vectors,
  then Linear(2D, D) → ReLU → Linear(D, 1)) gives our threshold logits."""
  cfg = encoders.config_from_hf(encoders.common.read_hf_config(tiny_dirs["bert"]))
  model = build_glidre(GLiDREConfig(hidden_size=40, adaptive_threshold=True), cfg, cfg, seed=5)
  out = export_glidre(model, tmp_path / "official", tiny_dirs["bert"], tiny_dirs["bert"])
  state = weights.read_state_dict(out / official.SAFETENSORS)
  shapes = {k: v.shape for k, v in state.items() if k.startswith("threshold_layer.")}
  assert shapes == {"threshold_layer.0.weight": (40, 80), "threshold_layer.0.bias": (40,),
                    "threshold_layer.3.weight": (1, 40), "threshold_layer.3.bias": (1,)}
  assert official.read_config(out)["loss"] == "atloss"
  back = import_glidre(out)
  assert back.config.adaptive_threshold
  _assert_same_params(model, back)
  delta, th_delta = _threshold_delta(model, TorchGLiDRE.from_pretrained(out), batch)
  print(f"threshold export: max |Δ logits| = {delta:.2e}, |Δ threshold| = {th_delta:.2e}")
  assert delta <= TOL and th_delta <= TOL


def test_import_of_torch_written_threshold_checkpoint(batch, tiny_dirs, tmp_path):
  hf = encoders.common.read_hf_config(tiny_dirs["bert"])
  oracle = _oracle(hf, hf, hidden=48, lop=False, adaptive_threshold=True, seed=2)
  assert oracle.threshold_layer is not None
  out = oracle.save_pretrained(tmp_path / "torch_glidre", tiny_dirs["bert"], tiny_dirs["bert"])
  ours = import_glidre(out)
  assert ours.config.adaptive_threshold and ours.threshold_layer.dense_in.kernel.shape == (96, 48)
  delta, th_delta = _threshold_delta(ours, oracle, batch)
  print(f"threshold import: max |Δ logits| = {delta:.2e}, |Δ threshold| = {th_delta:.2e}")
  assert delta <= TOL and th_delta <= TOL
  # The official afloss builds the same layer: it imports as the same model.
  official.write_config(out, official.read_config(out) | {"loss": "afloss"})
  _assert_same_params(ours, import_glidre(out))
  # A threshold checkpoint loaded as a plain model names the extra keys.
  official.write_config(out, official.read_config(out) | {"loss": ""})
  with pytest.raises(keymap.CheckpointMismatchError, match=r"unmapped keys.*threshold_layer\.0"):
    import_glidre(out)


def test_import_cli_writes_a_restorable_run(tiny_export, tmp_path):
  from glidre_jax import checkpointing
  workdir = tmp_path / "run"
  import_main(["--src", str(tiny_export), "--workdir", str(workdir)])
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["hidden_size"] == 40
  model = import_glidre(tiny_export)
  params = nnx.as_pure(nnx.split(model, nnx.Param, ...)[1])
  checkpoints = checkpointing.RunCheckpoints(workdir, save_every=1)
  try:
    step = checkpoints.best.latest_step()
    restored = checkpoints.best.restore(step, args=checkpointing.ocp.args.Composite(
        params=checkpointing.ocp.args.StandardRestore(params))).params
  finally:
    checkpoints.close()
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
