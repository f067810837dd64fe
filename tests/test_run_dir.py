"""A run directory's weights come back without building an optimizer."""
import grain
import jax
import numpy as np
from flax import nnx

from configs import default
from glidre_jax import checkpointing, run_dir, trainer as trainer_lib


def test_latest_and_best_weights_restore_without_an_optimizer(tmp_path):
  config = default.get_config("tiny")
  run_dir.save_config(config, tmp_path)
  model = run_dir.build_model(config, pretrained_encoders=False)
  trainer = trainer_lib.Trainer(model, config.train)
  state = trainer.initial_state
  # Distinct values per leaf, so that a mix-up of leaves cannot pass.
  params = jax.tree.map(lambda x: x + np.float32(0.25), state.params)
  state = trainer_lib.TrainState(state.step, params, state.rest, state.opt_state, state.metrics)
  checkpoints = checkpointing.RunCheckpoints(tmp_path, save_every=1)
  checkpoints.save_latest(1, state, iter(grain.MapDataset.range(3).to_iter_dataset()), force=True)
  checkpoints.save_best(1, jax.tree.map(lambda x: -x, params), {"selected_threshold": 0.3})
  checkpoints.wait()
  checkpoints.close()
  for which, sign in (("latest", 1), ("best", -1)):
    _, graphdef, restored, rest = run_dir.restore_weights(tmp_path, which)
    assert jax.tree.structure(restored) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
      np.testing.assert_array_equal(np.asarray(got), sign * np.asarray(want))
    nnx.merge(graphdef, restored, rest)  # a whole eval-mode model
