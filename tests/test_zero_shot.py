"""Relations held out of training (zero-shot split)."""
import pytest

from configs import default
from glidre_jax.data import registry


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  config = default.get_config()
  config.data.tfds_dir = str(tmp_path_factory.mktemp("tfds"))
  return registry.data_setup(config)


def test_held_out_relations_explicit_random_and_unknown(data):
  config = data.config
  config.data.held_out_relations = "P17, P131"
  assert registry.held_out_relations(config, data.schema) == ("P17", "P131")
  config.data.held_out_relations = "random:24"
  first = registry.held_out_relations(config, data.schema)
  assert len(first) == 24 and first == registry.held_out_relations(config, data.schema)
  config.data.held_out_relations = "P17,P9999"
  with pytest.raises(KeyError, match="P9999"):
    registry.held_out_relations(config, data.schema)
  config.data.held_out_relations = ""
  assert registry.zero_shot_split(data) == (data, data)


def test_split_separates_labels_and_facts(data):
  data.config.data.held_out_relations = "random:24"
  try:
    seen, unseen = registry.zero_shot_split(data)
  finally:
    data.config.data.held_out_relations = ""
  assert seen.schema.num_labels == 72 and unseen.schema.num_labels == 24
  assert not set(seen.schema.names) & set(unseen.schema.names)
  full = data.read_split("dev[:20]")
  train, held = seen.read_split("dev[:20]"), unseen.read_split("dev[:20]")
  for doc, a, b in zip(full, train, held):
    assert {r.label for r in a.relations} <= set(seen.schema.names)
    assert {r.label for r in b.relations} <= set(unseen.schema.names)
    assert len(a.relations) + len(b.relations) == len(doc.relations)  # nothing lost
  assert sum(len(d.relations) for d in held) > 0
