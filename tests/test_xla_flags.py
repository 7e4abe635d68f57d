import re

import jax
import numpy as np
import pytest

from configs import tiny
from selffb import sharding
from selffb.assemble import setup as setup_lib
from selffb.cpu import xla_flags
from selffb.data import pipeline
from selffb.tasks import seq
from selffb.train import state as state_lib
from selffb.train import step as step_lib

ONEDNN = {'xla_cpu_use_onednn': True,
          'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT',
          'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'}


def test_options_only_where_they_were_measured():
  assert xla_flags.step_options(True, 'cpu', 'x86_64', '0.10.2') == ONEDNN
  assert xla_flags.step_options(True, 'cpu', 'AMD64', '0.11.0.dev20260101') == ONEDNN
  assert xla_flags.step_options(False, 'cpu', 'x86_64', '0.10.2') == {}
  assert xla_flags.step_options(True, 'gpu', 'x86_64', '0.10.2') == {}
  assert xla_flags.step_options(True, 'cpu', 'aarch64', '0.10.2') == {}
  assert xla_flags.step_options(True, 'cpu', 'x86_64', '0.9.9') == {}


def test_options_as_xla_flags():
  assert xla_flags.as_xla_flags(ONEDNN) == (
      '--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=individual_dot '
      '--xla_cpu_experimental_ynn_fusion_type=reduce')
  assert xla_flags.as_xla_flags({}) == ''


def three_steps(data_dir, onednn):
  c = tiny.get_config()
  c.data.data_dir = data_dir
  c.train.xla_cpu_onednn = onednn
  s = setup_lib.setup(c, '', jax.devices()[:1])
  it = pipeline.make_iterator(seq.train_dataset(s.splits['train'], s.tokenizer, s.seq_len, 16, 0))
  batch = sharding.put_batch(
      s.mesh, {k: v for k, v in next(it).items() if k in seq.BATCH_KEYS})
  state, state_sh = state_lib.init_state(s, jax.random.key(0))
  p_train, p_eval = step_lib.compile_steps(s, state_sh)
  eval_batch = dict(batch, valid=np.ones(batch['inputs'].shape[0], np.float32))
  hlo = (p_train.lower(state, batch, jax.random.key(1)).compile().as_text() +
         p_eval.lower(state.params, eval_batch).compile().as_text())
  losses = []
  for _ in range(3):
    state, m = p_train(state, batch, jax.random.key(1))
    losses.append(float(m['loss']))
  return hlo, losses, jax.device_get(state.params)


@pytest.mark.skipif(not xla_flags.for_mesh(tiny.get_config(), sharding.make_mesh(
    tiny.get_config().mesh, jax.devices()[:1])), reason='oneDNN options apply to x86 CPUs')
@pytest.mark.slow
def test_onednn_steps_train_like_xla_defaults(tmp_path):
  """The same three steps with and without the options: same losses and parameters, and oneDNN
  really ran the dots of the train and eval steps."""
  hlo_on, losses_on, params_on = three_steps(str(tmp_path), True)
  hlo_off, losses_off, params_off = three_steps(str(tmp_path), False)
  assert hlo_on.count('__onednn_fusion') >= 10 and '__onednn_fusion' not in hlo_off
  # The MLP's weight gradients read their activations in place: model._dense merges (batch,
  # time), and with two contracted dimensions XLA copied one into a transposed layout first.
  mlp_copies = re.findall(r'= \S+ (?:copy|transpose)\(.*op_name="[^"]*/mlp/', hlo_on)
  assert not mlp_copies, mlp_copies
  np.testing.assert_allclose(losses_on, losses_off, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params_on), jax.tree.leaves(params_off)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
