"""Checks every model kind's tests share: one train step on given devices, and a run resumed
from its first checkpoint equal to the uninterrupted one."""
import os
import shutil

import jax
import numpy as np

from selffb import checkpoint
from selffb import sharding
from selffb.assemble import setup as setup_lib
from selffb.modes import train as train_mode
from selffb.train import state as state_lib
from selffb.train import step as step_lib


def one_step(config, batch, devices):
  """(parameters, metrics) after one train step of `config` on `devices` from seed-0 init."""
  s = setup_lib.setup(config, '', devices)
  state, state_sh = state_lib.init_state(s, jax.random.key(0))
  p_train, _ = step_lib.compile_steps(s, state_sh)
  state, metrics = p_train(state, sharding.put_batch(s.mesh, batch), jax.random.key(1))
  return jax.device_get(state.params), jax.device_get(metrics)


def assert_sharded_step_equals_one_device(config, batch):
  """One train step of `config` on a data 4 x fsdp 2 mesh of the 8 devices equals it on one."""
  config.mesh.update(data=4, fsdp=2)
  sharded = one_step(config, batch, jax.devices())
  config.mesh.update(data=1, fsdp=1)
  single = one_step(config, batch, jax.devices()[:1])
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def assert_resume_equals_uninterrupted(config, workdir, tmp_path, last_step):
  """Reruns `workdir`'s finished train run from its checkpoints without the last one and checks
  the parameters (and best parameters) equal the uninterrupted run's bit for bit."""
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(workdir, resumed, ignore=shutil.ignore_patterns(str(last_step)))
  assert str(last_step) not in os.listdir(os.path.join(resumed, 'checkpoints'))
  assert train_mode.train_and_evaluate(config, resumed)['steps'] == last_step
  load = lambda d: checkpoint.restore(checkpoint.make_manager(d, 2), None, None)
  for a, b in zip(jax.tree.leaves(load(workdir)[1:3]), jax.tree.leaves(load(resumed)[1:3])):
    np.testing.assert_array_equal(a, b)
