"""The encoder-decoder (model kind 'encdec'): cached decoding equals the full pass token by
token, the source's padding is never attended to, the encoder sees the whole source and the
decoder only its past, seq2seq batches are laid out exactly, and it trains, shards, samples,
self-trains and resumes through the same step, loop and sampler as the decoder."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kind_checks
import tensorflow_datasets as tfds

from configs import tiny
from selffb.assemble import setup as setup_lib
from selffb.data import pipeline
from selffb.data import tokenizers
from selffb.models import encdec
from selffb.modes import train as train_mode
from selffb.tasks import addition
from selffb.tasks import seq


def encdec_config(data_dir, **train):
  c = tiny.get_config()
  c.model.kind = 'encdec'
  c.data.data_dir = data_dir
  c.train.update(train)
  return c


@pytest.fixture(scope='module', params=['rope', 'learned'])
def model(request):
  c = encdec_config('')
  c.model.positions = request.param  # Learned: one position table for both sides.
  cfg = encdec.Config.from_config(c.model, 259)
  module = encdec.build(cfg)
  params = nn.unbox(module.init(jax.random.key(1), *encdec.example_inputs(cfg, 8))['params'])
  source = jax.random.randint(jax.random.key(0), (3, 7), 3, 259).at[:, 0].set(1)
  target = jax.random.randint(jax.random.key(2), (3, 6), 3, 259).at[:, 0].set(1)
  apply = lambda t, s, s_pos=None: module.apply({'params': params}, t, None, None, s, s_pos)[0]
  return cfg, module, params, source, target, apply


def left_padded(source, ids, pad):
  """The sampler's layout: `pad` padding slots (id -1) before the source tokens with `ids`."""
  b, length = source.shape[0], len(ids)
  tokens = jnp.pad(source[:, :length], ((0, 0), (pad, 0)))
  pos = jnp.pad(jnp.broadcast_to(jnp.asarray(ids), (b, length)), ((0, 0), (pad, 0)),
                constant_values=-1)
  return tokens, pos


@pytest.mark.slow
@pytest.mark.parametrize('ids,pad', [([0], 0), ([0, 1, 2, 3], 3), ([0, 1, 2, 0, 1, 2, 1], 2)])
def test_cached_decoding_equals_the_full_pass(model, ids, pad):
  """The decoder's ids continue from the source's last id (the third case restarts its ids per
  operand, as the aligned addition layout does, so the last id is not the length - 1)."""
  cfg, module, params, source, target, _ = model
  n, last = len(ids), ids[-1]
  src_pos = jnp.broadcast_to(jnp.asarray(ids), (3, n))
  dec_pos = jnp.broadcast_to(last + jnp.arange(6), (3, 6))
  full = module.apply({'params': params}, target, dec_pos, None, source[:, :n], src_pos)[0][
      'logits']
  tokens, pos = left_padded(source, ids, pad)
  logits, cache = encdec.prefill(module, params, tokens, pos, encdec.init_cache(cfg, 3, 16))
  np.testing.assert_allclose(logits, full[:, 0], rtol=1e-5, atol=1e-5)
  for t in range(1, target.shape[1]):  # The sampler's ids continue the prompt's.
    logits, cache = encdec.decode_step(module, params, target[:, t], jnp.full((3,), last + t),
                                       cache)
    np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5)


def test_cross_attention_never_reads_source_padding(model):
  _, _, _, source, target, apply = model
  pos = jnp.where(jnp.arange(7) < 5, jnp.arange(7), -1)[None].repeat(3, 0)
  other = source.at[:, 5:].set(9)
  np.testing.assert_array_equal(apply(target, source, pos)['logits'],
                                apply(target, other, pos)['logits'])
  changed = source.at[:, 4].set(9)  # A real source token does change them.
  assert not np.allclose(apply(target, source, pos)['logits'],
                         apply(target, changed, pos)['logits'])


@pytest.mark.slow
def test_gradients_reach_back_only_to_the_past_and_to_the_unpadded_source(model):
  """d logits[t] / d target embedding[s] is 0 for s > t and not for s <= t; d logits[t] /
  d source embedding[j] is not 0 for every real source slot j (the encoder and the
  cross-attention see all of it) and 0 for the padded ones."""
  _, module, params, source, target, _ = model
  src_pos = jnp.where(jnp.arange(7) < 5, jnp.arange(7), -1)[None].repeat(3, 0)
  t = 2

  def out_at_t(d_target, d_source):
    def add(next_fn, args, kwargs, context):
      out = next_fn(*args, **kwargs)
      if context.module.name == 'embed' and context.method_name == '__call__':
        out = out + (d_target if out.shape[1] == target.shape[1] else d_source)
      return out
    with nn.intercept_methods(add):
      logits = module.apply({'params': params}, target, None, None, source, src_pos)[0]['logits']
    return logits[:, t].sum()

  zeros = lambda n: jnp.zeros((3, n, module.cfg.d_model))
  g_target, g_source = jax.grad(out_at_t, argnums=(0, 1))(zeros(6), zeros(7))
  per_target = np.abs(np.asarray(g_target)).sum(axis=(0, 2))
  per_source = np.abs(np.asarray(g_source)).sum(axis=(0, 2))
  assert (per_target[t + 1:] == 0).all() and (per_target[:t + 1] > 0).all()
  assert (per_source[:5] > 0).all() and (per_source[5:] == 0).all()


def test_seq2seq_batches_have_the_source_and_the_shifted_target():
  tok = tokenizers.ByteTokenizer()
  fmt = addition.AlignedFormat(seq2seq=True)
  b = seq.encode_batch([{'prompt': '21+43=', 'answer': '640', 'digits': 2}], tok, 8, fmt)
  enc = lambda text: list(tok.encode(text))
  np.testing.assert_array_equal(b['source'][0], [1] + enc('21+43=') + [0])
  np.testing.assert_array_equal(b['source_positions'][0], [0, 1, 2, 0, 1, 2, 1, -1])
  np.testing.assert_array_equal(b['inputs'][0], [1] + enc('64') + [0] * 5)
  np.testing.assert_array_equal(b['targets'][0], enc('640') + [0] * 5)
  np.testing.assert_array_equal(b['positions'][0], [1, 2, 3] + [-1] * 5)  # From '=''s id.
  np.testing.assert_array_equal(b['loss_mask'][0], [1, 1, 1, 0, 0, 0, 0, 0])


@pytest.mark.slow
def test_the_sharded_step_equals_one_device(tmp_path):
  c = encdec_config(str(tmp_path / 'data'))
  s = setup_lib.setup(c, '')
  it = pipeline.make_iterator(seq.train_dataset(s.splits['train'], s.tokenizer, s.seq_len, 16, 0,
                                                fmt=s.fmt))
  batch = {k: v for k, v in next(it).items() if k in seq.BATCH_KEYS}
  assert set(seq.SOURCE_KEYS) <= set(batch)
  want_params, want = kind_checks.one_step(c, batch, jax.devices()[:1])
  c.mesh.update(data=4, fsdp=2)
  got_params, got = kind_checks.one_step(c, batch, jax.devices()[:8])
  for key in ('loss', 'ce', 'grad_norm'):
    assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_params,
               want_params)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('encdec_run'))
  c = encdec_config(str(tmp_path_factory.mktemp('encdec_data')), num_steps=60,
                    checkpoint_every=30, eval_every=30, log_every=10)
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


def test_the_strings_task_reverses_or_sorts_in_disjoint_splits():
  from configs import default  # pylint: disable=g-import-not-at-top
  from selffb.tasks import strings  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.data.task = 'strings'
  c.data.strings.update(alphabet='abc', num_train=300, num_validation=20, num_test=10,
                        max_length=5, test_lengths=(3, 7))
  splits = {k: list(pipeline.read_all(v)) for k, v in strings.load_splits(c, '').items()}
  assert set(splits) == {'train', 'validation', 'test_3', 'test_7'}
  text = lambda r: r['prompt'].decode()[:-1]
  assert all(r['answer'].decode() == text(r)[::-1] for rs in splits.values() for r in rs)
  assert {len(text(r)) for r in splits['test_7']} == {7} and len(splits['test_3']) == 10
  train = {text(r) for r in splits['train']}
  held = {text(r) for name in ('validation', 'test_3', 'test_7') for r in splits[name]}
  assert not train & held and {len(t) for t in train} <= set(range(1, 6))
  assert strings.record('bca', 'sort')['answer'] == b'abc'
  c.data.strings.update(op='shuffle', num_test=30)
  found = strings.config_problems(c)
  assert any("op='shuffle'" in f for f in found)
  assert any('27 strings of length 3' in f for f in found)


@pytest.mark.e2e
def test_a_self_training_round_runs_on_the_seq2seq_form_of_addition(tmp_path):
  from selffb.modes import selftrain  # pylint: disable=g-import-not-at-top
  c = encdec_config(str(tmp_path / 'data'), num_steps=20)
  c.data.addition.update(format='aligned', test_digits=(3, 4))
  c.selftrain.update(rounds=1, start_digits=0, prompts_per_round=32, steps_per_round=10,
                     warmup_steps=2, val_per_length=16)
  rows = selftrain.run_selftrain(c, str(tmp_path / 'run'))
  assert [r['round'] for r in rows] == [0, 1]
  kept = [json.loads(l) for l in open(tmp_path / 'run' / 'rounds' / 'r01' / 'kept.jsonl')]
  assert all(k['correct'] for k in kept)  # The exact verifier read the decoded targets.
  assert rows[1]['generated'] == 32 and rows[1]['digits'] == 4


class TinyPairs(tfds.core.GeneratorBasedBuilder):
  """A translation-like dataset the test prepares offline: 'en' words and their reversal 'de'."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'en': tfds.features.Text(), 'de': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {name: self._generate_examples(n, seed) for name, n, seed in (
        ('train', 256, 0), ('validation', 32, 1), ('test', 16, 2))}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      word = ''.join(rng.choice(list('abcdef'), int(rng.integers(2, 6))))
      yield i, {'en': word, 'de': word[::-1]}


@pytest.mark.e2e
def test_the_pairs_task_reads_a_tfds_dataset_by_name_offline(tmp_path):
  from selffb import errors  # pylint: disable=g-import-not-at-top
  from selffb.tasks import pairs  # pylint: disable=g-import-not-at-top
  data = tmp_path / 'tfds'
  TinyPairs(data_dir=str(data), file_format='array_record').download_and_prepare()
  c = encdec_config(str(tmp_path / 'unused'), num_steps=30, eval_every=30)
  c.data.task, c.data.seq_len = 'pairs', 16
  c.data.pairs.update(tfds_name='tiny_pairs', data_dir=str(data), test_split='test',
                      separator='', max_bytes=4)
  splits = pairs.load_splits(c, '')
  assert (len(splits['train']), len(splits['validation']), len(splits['test_test'])) == (
      256, 32, 16)
  record = splits['train'].__getitems__([0])[0]
  assert record['answer'] == record['prompt'][::-1] and len(record['prompt']) <= 4
  summary = train_mode.train_and_evaluate(c, str(tmp_path / 'run'))
  assert summary['steps'] == 30 and set(summary['exact_match']) == {'test'}
  c.data.pairs.target_key = 'fr'
  with pytest.raises(errors.InputError, match=r"no feature\(s\) \['fr'\]; its features are "
                     r"\['de', 'en'\]"):
    pairs.load_splits(c, '')
  c.data.pairs.update(target_key='de', tfds_name='not_prepared_pairs')
  with pytest.raises(errors.InputError, match='tfds build not_prepared_pairs'):
    pairs.load_splits(c, '')
