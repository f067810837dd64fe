"""Export a GLiDRE's fine-tuned text encoder as a Hugging Face model folder.

    python -m converters.export_encoder --workdir runs/default --out encoder_hf [--which best]

then `transformers.AutoModel.from_pretrained("encoder_hf")`. Writes config.json
(the source encoder's), model.safetensors (HF `BertModel` / `DebertaV2Model`
keys, through the encoder family's own key table) and the tokenizer files.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
from absl import flags

from . import official
from .export_official import (check_encoder_dir, define_run_flags, extra_encoder_tensors,
                              load_run_model)
from glidre_jax import cli, encoders, keymap, weights
from glidre_jax.model import params as glidre_params


def encoder_state_dict(encoder) -> dict[str, np.ndarray]:
  """A Flax encoder's parameters under HF torch keys."""
  table = encoders.encoder_family(encoder.config.model_type).key_table
  flat = {k: np.asarray(v) for k, v in weights.flat_params(encoder).items()}
  return keymap.convert_to_torch(table, flat)


def export_text_encoder(model, out_dir: str | os.PathLike, encoder_dir: str | os.PathLike,
                        ) -> pathlib.Path:
  """Writes the text encoder of `model` (a GLiDRE, or an encoder module) as a HF
  folder; `encoder_dir` is the HF directory it was initialised from."""
  encoder = (glidre_params.encoder_modules(model)[0]
             if hasattr(model, glidre_params.ENCODER_SCOPE) else model)
  check_encoder_dir(encoder, encoder_dir, "text")
  out = pathlib.Path(out_dir).absolute()
  official.write_encoder_folder(encoder_dir, out)
  state = encoder_state_dict(encoder)
  state.update(extra_encoder_tensors(encoder_dir, encoder.config.model_type))
  official.write_weights(out, state, torch_bin=False, safetensors=True)
  return out


FLAGS = flags.FlagValues()  # this tool's own (see glidre_jax.cli)
define_run_flags(FLAGS)


def main(argv=None) -> None:
  cli.parse(FLAGS, argv, __doc__)
  args = FLAGS
  model, text_dir, _ = load_run_model(args.workdir, args.which)
  out = export_text_encoder(model, args.out, text_dir)
  print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))


if __name__ == "__main__":
  main()
