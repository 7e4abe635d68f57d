import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import tiny
from selffb import errors
from selffb import sharding
from selffb.assemble import checks
from selffb.assemble import setup as setup_lib
from selffb.data import pipeline
from selffb.tasks import seq
from selffb.train import state as state_lib
from selffb.train import step as step_lib


@pytest.fixture(scope='module')
def batches(tmp_path_factory):
  c = tiny.get_config()
  c.data.data_dir = str(tmp_path_factory.mktemp('data'))
  s = setup_lib.setup(c, '')
  it = pipeline.make_iterator(seq.train_dataset(s.splits['train'], s.tokenizer, s.seq_len, 16, 0))
  return c.data.data_dir, [{k: v for k, v in next(it).items() if k in seq.BATCH_KEYS}
                           for _ in range(3)]


def run_steps(data_dir, batches, devices, mesh=(1, 1, 1), accum=1, bias=False):
  c = tiny.get_config()
  c.data.data_dir = data_dir
  c.model.use_bias = bias
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  c.train.grad_accum_steps = accum
  s = setup_lib.setup(c, '', devices)
  state, state_sh = state_lib.init_state(s, jax.random.key(0))
  p_train, _ = step_lib.compile_steps(s, state_sh)
  losses = []
  for b in batches:
    state, m = p_train(state, sharding.put_batch(s.mesh, b), jax.random.key(1))
    losses.append(float(m['loss']))
  return state, losses


@pytest.fixture(scope='module')
def single(batches):
  return run_steps(*batches, jax.devices()[:1])


@pytest.mark.slow
@pytest.mark.parametrize('mesh', [
    pytest.param((8, 1, 1), id='data8'),
    pytest.param((1, 8, 1), id='fsdp8'),
    pytest.param((4, 1, 2), id='data4xtensor2'),
    pytest.param((2, 2, 2), id='data2xfsdp2xtensor2')])
def test_sharded_steps_equal_one_device(batches, single, mesh):
  state, losses = run_steps(*batches, jax.devices(), mesh)
  want_state, want_losses = single
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  up = state.params['block_0']['mlp']['up']['kernel']  # (embed 32, mlp 64)
  data_, fsdp, tensor = mesh
  assert up.sharding.spec == P('fsdp', 'tensor')
  assert up.addressable_shards[0].data.shape == (32 // fsdp, 64 // tensor)
  # Adam's moments are sharded like the parameters.
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == up.shape]
  assert moments and all(m.sharding.spec == P('fsdp', 'tensor') for m in moments)


@pytest.mark.slow
def test_biases_are_sharded_like_their_outputs(batches):
  state, losses = run_steps(*batches, jax.devices(), (2, 2, 2), bias=True)
  want_state, want_losses = run_steps(*batches, jax.devices()[:1], bias=True)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  block = state.params['block_0']
  assert block['mlp']['up']['bias'].sharding.spec == P('tensor')
  assert block['mlp']['down']['bias'].sharding.spec == P('fsdp')
  assert block['attn']['query']['bias'].sharding.spec == P('tensor', None)
  assert block['attn']['query']['bias'].addressable_shards[0].data.shape == (2, 8)  # 4 heads / 2.


@pytest.mark.slow
def test_gradient_accumulation_equals_one_large_batch(batches, single):
  state, losses = run_steps(*batches, jax.devices()[:1], accum=4)
  want_state, want_losses = single
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_rules_that_do_not_fit_the_model_are_errors():
  c = tiny.get_config()
  c.mesh.data, c.mesh.tensor = 1, 8  # 4 heads cannot split 8 ways.
  c.mesh.rules.vocab = 'fsdp'
  c.mesh.rules.experts = 'data'
  with pytest.raises(errors.ConfigError) as e:
    checks.check_config(c, num_devices=8)
  assert 'rules.heads' in str(e.value) and 'rules.experts' in str(e.value)
  assert 'rules.vocab' not in str(e.value)  # fsdp is 1 here: nothing to split.
  c.train.grad_accum_steps = 3
  with pytest.raises(errors.ConfigError, match='times grad_accum_steps=3'):
    checks.check_config(c, num_devices=8)


@pytest.mark.slow
def test_scanned_layers_are_sharded_like_unrolled_ones(batches):
  c = tiny.get_config()
  c.data.data_dir = batches[0]
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  c.model.scan_layers = True
  s = setup_lib.setup(c, '')
  state, _ = state_lib.init_state(s, jax.random.key(0))
  up = state.params['blocks']['mlp']['up']['kernel']  # (layers 2, embed 32, mlp 64)
  assert up.sharding.spec == P(None, 'fsdp', 'tensor')
  assert up.addressable_shards[0].data.shape == (2, 16, 32)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_state(batches):
  data_dir, bs = batches
  c = tiny.get_config()
  c.data.data_dir = data_dir
  c.model.dtype = 'bfloat16'
  c.mesh.data = 1
  s = setup_lib.setup(c, '', jax.devices()[:1])
  state, state_sh = state_lib.init_state(s, jax.random.key(0))
  p_train, _ = step_lib.compile_steps(s, state_sh)
  for b in bs:
    state, m = p_train(state, sharding.put_batch(s.mesh, b), jax.random.key(1))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype in (np.float32, np.int32, bool) for x in jax.tree.leaves(state.opt_state))
  _, f32_losses = run_steps(data_dir, bs, jax.devices()[:1])
  np.testing.assert_allclose(float(m['loss']), f32_losses[-1], rtol=0.02)
