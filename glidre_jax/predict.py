"""Relation triples for new documents and your own relation labels.

    python -m glidre_jax.predict --checkpoint runs/default --input docs.jsonl \
        --labels labels.txt --output out.jsonl [--threshold 0.6]

--input: JSON lines (one document per line) or a JSON list; each document is
raw text with character-offset entities ({"text", "entities"}, see
`glidre_jax.data.inputs`), a DocRED dict or a reference GLiDRE dict.
--labels: one relation name per line (blank lines and '#' comments skipped,
no duplicates; `data.local_files.read_label_file`).
--checkpoint: a glidre_jax.train run directory, a save_pretrained folder, an
official GLiDRE directory, or a Hub id. Writes one JSON object per document
and line: {"title", ["id",] "relations": [{"head", "tail", "label", "score",
"head_id", "tail_id", "head_text", "tail_text", "head_span", "tail_span",
"span_unit"}, ...]} (see `decoding.entity_records`).
Without --threshold, the τ stored with the run's best checkpoint is used
(eval.threshold for --which latest and official checkpoints).
Every error (a missing or unreadable file, invalid JSON, an option that does
not fit the labels, a missing checkpoint) exits with status 2 and a message
naming the file.
"""
from __future__ import annotations

import json
import pathlib
import sys

from absl import flags

from glidre_jax import allocator, cli, decoding
from glidre_jax.api import GLiDREPredictor
from glidre_jax.data import inputs, local_files, readers


FLAGS = flags.FlagValues()  # this tool's own (see glidre_jax.cli)
cli.define_checkpoint(FLAGS)
cli.define_which(FLAGS)
flags.DEFINE_string("input", None, "documents (.jsonl or JSON list)", flag_values=FLAGS)
flags.DEFINE_string("labels", None, "relation names, one per line", flag_values=FLAGS)
flags.DEFINE_string("output", None, "JSON lines, one per document", flag_values=FLAGS)
flags.mark_flags_as_required(["input", "labels", "output"], flag_values=FLAGS)
flags.DEFINE_float("threshold", None, "default: the τ stored with the run's best checkpoint",
                   flag_values=FLAGS)
flags.DEFINE_string("label_thresholds", None,
                    "JSON file {label: threshold} overriding --threshold", flag_values=FLAGS)
flags.DEFINE_string("constraints", None,
                    "JSON file {label: [[head types], [tail types]]} (null: any type)",
                    flag_values=FLAGS)
flags.DEFINE_integer("top_k", None, "at most k labels per pair", flag_values=FLAGS)
flags.DEFINE_bool("keep_self_pairs", False,
                  "also report (e, e) pairs (default: as the model's model.self_pairs)",
                  flag_values=FLAGS)
flags.DEFINE_integer("batch_size", None,
                     "documents per batch (default: the run's eval_batch_size)",
                     flag_values=FLAGS)
flags.DEFINE_integer("stride", None,
                     "encode documents longer than the run's max_length in overlapping "
                     "windows starting every STRIDE subwords; 0 truncates them "
                     "(default: the run's data.window_stride)", flag_values=FLAGS)
flags.DEFINE_string("text_encoder_dir", None, "official checkpoints only", flag_values=FLAGS)
flags.DEFINE_string("label_encoder_dir", None, "official checkpoints only", flag_values=FLAGS)


def read_records(path) -> list[dict]:
  """A JSON list, or JSON lines, of document dicts."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"input file {path} does not exist")
  records = readers.json_records(path.read_text(encoding="utf-8"), path)
  if not records:
    raise ValueError(f"{path}: no documents")
  return records


def _read_json_option(path, what: str) -> dict | None:
  """A JSON object {label: ...} from `path` (None without a path)."""
  if path is None:
    return None
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} file {path} does not exist")
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{what} file {path}: invalid JSON at line {e.lineno}: {e.msg}") from None
  if not isinstance(value, dict):
    raise ValueError(f"{what} file {path}: expected a JSON object {{label: ...}}, got "
                     f"{type(value).__name__}")
  return value


def _check_option(labels, what: str, path, **option) -> None:
  """Builds a decoder with one option to name its file in any error."""
  try:
    decoding.make_decoder(labels, **option)
  except (ValueError, TypeError) as err:
    raise ValueError(f"{what} file {path}: {err}") from None


def run(args) -> int:
  """Predicts with the parsed flags `args` (FLAGS); 0 on success."""
  labels = list(decoding.check_labels(local_files.read_label_file(args.labels)))
  records = read_records(args.input)
  docs = inputs.to_documents(records)  # every input error before the model loads
  constraints = _read_json_option(args.constraints, "constraints")
  label_thresholds = _read_json_option(args.label_thresholds, "label thresholds")
  # Every option is checked before the model loads.
  _check_option(labels, "constraints", args.constraints, constraints=constraints)
  _check_option(labels, "label thresholds", args.label_thresholds,
                label_thresholds=label_thresholds)
  decoding.make_decoder(labels, top_k=args.top_k)
  kwargs = {"batch_size": args.batch_size} if args.batch_size else {}
  if args.stride is not None:
    kwargs["stride"] = args.stride
  model = GLiDREPredictor.from_pretrained(args.checkpoint, args.which,
                                          text_encoder_dir=args.text_encoder_dir,
                                          label_encoder_dir=args.label_encoder_dir, **kwargs)
  # The records, not `docs`: raw-text inputs keep their character spans.
  results = model.predict(records, labels, args.threshold, label_thresholds=label_thresholds,
                          top_k=args.top_k, drop_self_pairs=False if args.keep_self_pairs else None,
                          constraints=constraints,
                          progress=cli.progress_bar("predict"))
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    for record, doc, triples in zip(records, docs, results):
      line = {"title": doc.title}
      if isinstance(record, dict) and "id" in record:
        line["id"] = record["id"]
      line["relations"] = triples
      f.write(json.dumps(line, ensure_ascii=False) + "\n")
  n = sum(len(t) for t in results)
  print(f"wrote {n} relations for {len(docs)} documents to {out}")
  return 0


def main(argv=None) -> int:
  cli.parse(FLAGS, argv, __doc__)
  try:
    return run(FLAGS)
  except (ValueError, FileNotFoundError, ImportError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2


console_main = allocator.console(main)  # the `glidre-predict` console script

if __name__ == "__main__":
  sys.exit(console_main())
