"""The command-line layer: one absl flag style, one meaning of --checkpoint / --which."""
import pytest

from glidre_jax import cli, evaluate, export, predict
from converters import export_encoder, export_official, import_official

TOOLS = (evaluate, predict, export, export_official, export_encoder, import_official)


def _evaluate_run(*argv):
  cli.parse(evaluate.FLAGS, argv, evaluate.__doc__)
  return evaluate.run_and_weights(evaluate.FLAGS)


def test_evaluate_checkpoint_and_which():
  assert _evaluate_run("--workdir", "runs/a") == ("runs/a", "best")
  assert _evaluate_run("--checkpoint=runs/a", "--which=latest") == ("runs/a", "latest")
  # The old spelling: --checkpoint best|latest meant --which here.
  assert _evaluate_run("--workdir=runs/a", "--checkpoint", "latest") == ("runs/a", "latest")
  assert _evaluate_run("--checkpoint=./best") == ("./best", "best")  # a run named best


@pytest.mark.parametrize("argv, message", [
    ((), "--workdir .or --checkpoint. must name"),
    (("--workdir=runs/a", "--checkpoint=runs/b"), "name two runs"),
    (("--workdir=runs/a", "--checkpoint=best", "--which=latest"), "contradicts --which latest"),
    (("--workdir=runs/a", "--which=newest"), "--which=newest: value should be one of"),
    (("--workdir=runs/a", "--treshold=0.5"), "Unknown command line flag 'treshold'"),
    (("--workdir=runs/a", "stray"), r"unexpected arguments: \['stray'\]"),
])
def test_usage_errors_exit_2_naming_the_flag(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_:
    _evaluate_run(*argv)
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and __import__("re").search(message, err), err


def test_parse_starts_each_call_from_the_defaults():
  cli.parse(predict.FLAGS, ["--checkpoint=a", "--input=b", "--labels=c", "--output=d",
                            "--which=latest", "--keep_self_pairs", "--top_k", "2"], "")
  assert (predict.FLAGS.which, predict.FLAGS.keep_self_pairs, predict.FLAGS.top_k) == (
      "latest", True, 2)
  cli.parse(predict.FLAGS, ["--checkpoint=a", "--input=b", "--labels=c", "--output=d"], "")
  assert (predict.FLAGS.which, predict.FLAGS.keep_self_pairs, predict.FLAGS.top_k) == (
      "best", False, None)


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.__name__)
def test_help_lists_every_flag(tool, capsys):
  with pytest.raises(SystemExit) as exit_:
    tool.main(["--help"])
  assert exit_.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith(tool.__doc__.strip().splitlines()[0])
  for name in tool.FLAGS:
    assert f"--{name}:" in out or f"--[no]{name}:" in out, name
  if "which" in tool.FLAGS:  # one meaning of --which everywhere
    assert "--which: <best|latest>: a run directory's best-on-dev or latest weights" in out


@pytest.mark.parametrize("tool", (export_official, export_encoder), ids=lambda t: t.__name__)
def test_exports_take_checkpoint_for_the_run(tool):
  cli.parse(tool.FLAGS, ["--checkpoint", "runs/a", "--out=o", "--which=latest"], "")
  assert (tool.FLAGS.workdir, tool.FLAGS.which, tool.FLAGS.out) == ("runs/a", "latest", "o")
