"""The LSTM language model (model kind 'lstm'): its carry is a decoding cache that continues a
prompt exactly as the full pass does, padding leaves the state alone, and it trains, shards,
samples and resumes through the same step, loop and sampler as the decoder."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kind_checks

from configs import tiny
from selffb.assemble import setup as setup_lib
from selffb.data import pipeline
from selffb.models import lstm
from selffb.modes import train as train_mode
from selffb.tasks import seq


def lstm_config(data_dir, **train):
  c = tiny.get_config()
  c.model.kind = 'lstm'
  c.data.data_dir = data_dir
  c.train.update(train)
  return c


@pytest.fixture(scope='module')
def model():
  cfg = lstm.Config.from_config(lstm_config('').model, 259)
  module = lstm.build(cfg)
  tokens = jax.random.randint(jax.random.key(0), (3, 12), 3, 259)
  params = nn.unbox(module.init(jax.random.key(1), tokens)['params'])
  return cfg, module, params, tokens


@pytest.mark.parametrize('prompt_len', [pytest.param(1, marks=pytest.mark.slow), 4,
                                        pytest.param(7, marks=pytest.mark.slow)])
def test_cached_continuation_equals_the_full_pass(model, prompt_len):
  cfg, module, params, tokens = model
  full = module.apply({'params': params}, tokens)[0]['logits']
  pad = 3  # Left padding, as the sampler lays prompts out.
  prompt = jnp.pad(tokens[:, :prompt_len], ((0, 0), (pad, 0)))
  pos = jnp.pad(jnp.broadcast_to(jnp.arange(prompt_len), (3, prompt_len)), ((0, 0), (pad, 0)),
                constant_values=-1)
  logits, cache = lstm.prefill(module, params, prompt, pos, lstm.init_cache(cfg, 3, 32))
  np.testing.assert_allclose(logits, full[:, prompt_len - 1], rtol=1e-5, atol=1e-5)
  for t in range(prompt_len, tokens.shape[1]):
    logits, cache = lstm.decode_step(module, params, tokens[:, t], jnp.full((3,), t), cache)
    np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5)


def test_padding_leaves_the_state_alone(model):
  """Pads after a sequence (training's layout) or before it (the sampler's) leave the carry and
  the logits of the real tokens as they are."""
  cfg, module, params, tokens = model
  run = lambda t, p: module.apply({'params': params}, t, p, lstm.init_cache(cfg, 3, 0))
  ids = jnp.broadcast_to(jnp.arange(8), (3, 8))
  want, want_cache = run(tokens[:, :8], ids)
  right_pos = jnp.concatenate([ids, jnp.full((3, 4), -1)], axis=1)
  _, right_cache = run(tokens.at[:, 8:].set(7), right_pos)
  left = jnp.pad(tokens[:, :8], ((0, 0), (2, 0)), constant_values=5)
  left_out, left_cache = run(left, jnp.pad(ids, ((0, 0), (2, 0)), constant_values=-1))
  for got in (right_cache, left_cache):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got,
                 want_cache)
  np.testing.assert_allclose(left_out['logits'][:, 2:], want['logits'], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_the_sharded_step_equals_one_device(tmp_path):
  c = lstm_config(str(tmp_path / 'data'))
  s = setup_lib.setup(c, '')
  it = pipeline.make_iterator(seq.train_dataset(s.splits['train'], s.tokenizer, s.seq_len, 16, 0))
  batch = {k: v for k, v in next(it).items() if k in seq.BATCH_KEYS}
  want_params, want = kind_checks.one_step(c, batch, jax.devices()[:1])
  c.mesh.update(data=4, fsdp=2)
  got_params, got = kind_checks.one_step(c, batch, jax.devices()[:8])
  for key in ('loss', 'ce', 'grad_norm'):
    assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_params,
               want_params)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('lstm_run'))
  c = lstm_config(str(tmp_path_factory.mktemp('lstm_data')), num_steps=60, checkpoint_every=30,
                  eval_every=30, log_every=10)
  c.data.addition.update(max_digits=2, test_digits=(1, 2))
  return c, workdir, train_mode.train_and_evaluate(c, workdir)


@pytest.mark.e2e
def test_it_trains_and_decodes_through_the_loop_and_the_sampler(trained):
  _, workdir, summary = trained
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  ce = [r['train/ce'] for r in rows if 'train/ce' in r]
  assert ce[-1] < ce[0] - 1.0
  assert summary['steps'] == 60 and set(summary['exact_match']) == {'1', '2'}


@pytest.mark.e2e
def test_resume_equals_uninterrupted(trained, tmp_path):
  c, workdir, _ = trained
  kind_checks.assert_resume_equals_uninterrupted(c, workdir, tmp_path, 60)