"""Write a trained GLiDRE as a portable folder, the official layout, or a Hub repository.

    glidre-export --checkpoint runs/default --out my_glidre              # save_pretrained folder
    glidre-export --checkpoint runs/default --out glidre_pt --official   # official PyTorch layout
    glidre-export --checkpoint runs/default --push_to_hub org/name [--private]

--checkpoint: anything `GLiDRE.from_pretrained` loads (run directory, saved
folder, official directory, Hub id). --scores NAME=FILE adds an evaluation
(a JSON object with precision / recall / f1 / ign_f1 / threshold) to the
model card, e.g. --scores test=test_scores.json.
"""
from __future__ import annotations

import json
import pathlib
import sys

from absl import flags

from glidre_jax import cli


def read_scores(specs) -> dict:
  scores = {}
  for spec in specs or ():
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
      raise ValueError(f"--scores {spec!r}: expected NAME=FILE (e.g. test=test_scores.json)")
    file = pathlib.Path(path)
    if not file.is_file():
      raise FileNotFoundError(f"--scores {name}: file {file} does not exist")
    try:
      value = json.loads(file.read_text())
    except json.JSONDecodeError as err:
      raise ValueError(f"--scores {name}: {file} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
      raise ValueError(f"--scores {name}: {file} must hold a JSON object of scores")
    scores[name] = value
  return scores


FLAGS = flags.FlagValues()  # this tool's own (see glidre_jax.cli)
cli.define_checkpoint(FLAGS, "run directory, saved folder, official directory or Hub id")
cli.define_which(FLAGS)
flags.DEFINE_string("out", None, "folder to write", flag_values=FLAGS)
flags.DEFINE_bool("official", False, "the official PyTorch GLiDRE layout (needs torch)",
                  flag_values=FLAGS)
flags.DEFINE_string("push_to_hub", None, "ORG/NAME: upload to this Hub model repository "
                    "(needs a network and a token)", flag_values=FLAGS)
flags.DEFINE_bool("private", False, "create the Hub repository private", flag_values=FLAGS)
flags.DEFINE_multi_string("scores", None, "NAME=FILE: an evaluation for the model card "
                          "(repeatable)", flag_values=FLAGS)
flags.DEFINE_string("license", "apache-2.0", "the model card's license", flag_values=FLAGS)


def main(argv=None) -> int:
  cli.parse(FLAGS, argv, __doc__)
  args = FLAGS
  if not args.out and not args.push_to_hub:
    cli.usage_error("give --out, --push_to_hub or both")
  try:
    from glidre_jax.api import GLiDREPredictor
    scores = read_scores(args.scores)
    model = GLiDREPredictor.from_pretrained(args.checkpoint, args.which)
    kwargs = dict(official=args.official, scores=scores, license=args.license)
    if args.out:
      out = model.save_pretrained(args.out, model_id=args.push_to_hub, **kwargs)
      print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    if args.push_to_hub:
      info = model.push_to_hub(args.push_to_hub, private=args.private or None, **kwargs)
      print(f"pushed to {args.push_to_hub}: {info}")
  except (ValueError, FileNotFoundError, ImportError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
