"""Text corpora (task 'text'): named tfds datasets read offline, local files, SentencePiece,
the grain pipeline (packing, long documents, per-host shards, exact resume) and its errors."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import tiny
from selffb import errors
from selffb import models
from selffb.assemble import checks
from selffb.assemble import setup as setup_lib
from selffb.data import lm as lm_data
from selffb.data import pipeline
from selffb.data import text
from selffb.data import tokenizers
from selffb.tasks import lm
import kind_checks

TOK = tokenizers.ByteTokenizer()


def docs_of(n, seed=0):
  """n documents of 1..60 bytes, each starting with its number."""
  rng = np.random.default_rng(seed)
  return pipeline.ListSource([f'{i}:' + 'ab c.'[:1] * int(rng.integers(0, 58)) for i in range(n)])


def text_config(tmp_path, paths, **data):
  c = tiny.get_config()
  c.data.task, c.data.data_dir, c.data.seq_len = 'text', str(tmp_path / 'data'), 16
  c.data.text.paths = paths
  c.data.update(data)
  c.evals = {}
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# The pipeline.

def test_packed_rows_restart_positions_per_document_and_mask_padding():
  docs = pipeline.ListSource(['abc', 'de', 'fghijklmnopqrstuvwxyz'])  # 5, 4 and 23 tokens.
  spec = lm_data.RowSpec(seq_len=8, pack=True, long_docs='split')
  rows = list(lm_data.rows(docs, TOK, spec, shuffle=False, repeat=False, bins=4))
  # 'abc' (bos a b c eos: 4 inputs) and 'de' (3 inputs) share the first row.
  first = rows[0]
  np.testing.assert_array_equal(first['segments'], [1, 1, 1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(first['positions'], [0, 1, 2, 3, 0, 1, 2, -1])
  np.testing.assert_array_equal(first['inputs'][:4], TOK.encode_prompt('abc'))
  np.testing.assert_array_equal(first['targets'][4:7], [*TOK.encode('de'), TOK.eos_id])
  np.testing.assert_array_equal(first['loss_mask'], [1] * 7 + [0])
  # The 23-token document is split into pieces of 9 tokens sharing their boundary token: every
  # token after bos is a target exactly once, and each piece's positions start at 0.
  targets = np.concatenate([r['targets'][r['segments'] > 0] for r in rows])
  want = [*TOK.encode('abc'), 2, *TOK.encode('de'), 2, *TOK.encode('fghijklmnopqrstuvwxyz'), 2]
  assert sorted(targets.tolist()) == sorted(want)
  assert all(r['positions'][0] == 0 for r in rows)


def test_padded_rows_hold_one_document_each():
  docs = pipeline.ListSource(['abc', 'de'])
  spec = lm_data.RowSpec(seq_len=6, pack=False)
  rows = list(lm_data.rows(docs, TOK, spec, shuffle=False, repeat=False))
  assert 'segments' not in rows[0]
  np.testing.assert_array_equal(rows[1]['positions'], [0, 1, 2, -1, -1, -1])
  np.testing.assert_array_equal(rows[1]['loss_mask'], [1, 1, 1, 0, 0, 0])


@pytest.mark.parametrize('policy, pieces, dropped', [('split', 3, 0), ('truncate', 1, 14),
                                                     ('drop', 0, 22)])
def test_long_documents_policy_and_counts(policy, pieces, dropped):
  docs = pipeline.ListSource(['x' * 21, 'short'])  # 23 tokens: 22 targets; rows of 8.
  spec = lm_data.RowSpec(seq_len=8, pack=False, long_docs=policy)
  counts = lm_data.long_doc_counts(docs, TOK, spec)
  assert counts == {'documents': 2, 'long': 1, 'pieces': pieces, 'dropped_tokens': dropped}
  rows = list(lm_data.rows(docs, TOK, spec, shuffle=False, repeat=False))
  assert len(rows) == pieces + 1
  assert sum(r['loss_mask'].sum() for r in rows) == 22 - dropped + 6


def test_same_seed_same_batches_and_another_seed_others():
  docs = docs_of(200)
  spec = lm_data.RowSpec(seq_len=32)
  make = lambda seed: take(iter(lm_data.train_batches(docs, TOK, spec, 8, seed,
                                                      shuffle_window=16)), 6)
  assert_batches_equal(make(0), make(0))
  assert not np.array_equal(make(0)[0]['inputs'], make(1)[0]['inputs'])


@pytest.mark.parametrize('pack, window', [(True, 16), (False, 0), (True, 0)])
def test_resume_mid_epoch_gives_the_identical_next_batches(pack, window):
  docs = pipeline.ListSource([f'document {i} ' * (1 + i % 9) for i in range(60)])  # Many split.
  spec = lm_data.RowSpec(seq_len=24, pack=pack)
  ds = lm_data.train_batches(docs, TOK, spec, 4, seed=3, shuffle_window=window)
  it = iter(ds)
  take(it, 7)
  state = it.get_state()
  uninterrupted = take(it, 40)  # Crosses into later epochs.
  resumed = iter(ds)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 40), uninterrupted)


@pytest.mark.parametrize('hosts', [1, 2, 4])
def test_hosts_read_disjoint_shards_that_cover_every_document(hosts):
  docs = docs_of(37)
  spec = lm_data.RowSpec(seq_len=64, pack=False)
  seen = []
  for i in range(hosts):
    rows = lm_data.rows(docs, TOK, spec, seed=5, repeat=False, process_index=i,
                        process_count=hosts)
    seen.append([TOK.decode(r['inputs'][1:]).split(':')[0] for r in rows])
  flat = [d for host in seen for d in host]
  assert sorted(flat, key=int) == [str(i) for i in range(37)]  # No loss, no overlap.
  assert all(abs(len(h) - 37 / hosts) < 1 for h in seen)
  batches = lm_data.train_batches(docs, TOK, spec, 8, seed=0, process_index=hosts - 1,
                                  process_count=hosts)
  assert next(iter(batches))['inputs'].shape == (8 // hosts, 64)


# The model keeps packed documents apart.

@pytest.mark.slow
@pytest.mark.parametrize('positions, attention', [
    ('rope', 'einsum'), ('learned', 'einsum'), ('rope', 'dot_product')])
def test_packing_never_lets_a_token_attend_across_documents(positions, attention):
  c = tiny.get_config()
  c.model.update(positions=positions, attention=attention, attention_block=4)
  model = models.get('decoder')
  cfg = model.Config.from_config(c.model, TOK.vocab_size)
  module = model.build(cfg)
  params = module.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))['params']
  a, b = TOK.encode_prompt('hello wo'), TOK.encode_prompt('doc b!')  # 9 and 7 tokens.
  packed = np.concatenate([a, b])[None]
  pos = np.concatenate([np.arange(9), np.arange(7)])[None]
  seg = np.asarray([[1] * 9 + [2] * 7])
  other_a = np.concatenate([TOK.encode_prompt('HELLO WO'), b])[None]

  def loss_on_b(p, tokens):  # Sum of b's log-probabilities of its next tokens.
    logits = model.forward(module, p, {'inputs': tokens, 'positions': pos, 'segments': seg})[
        'logits']
    return jnp.sum(jax.nn.log_softmax(logits[0, 9:15]) * jax.nn.one_hot(b[1:], TOK.vocab_size))

  def loss_alone(p):
    logits = model.forward(module, p, {'inputs': b[None], 'positions': np.arange(7)[None]})[
        'logits']
    return jnp.sum(jax.nn.log_softmax(logits[0, :6]) * jax.nn.one_hot(b[1:], TOK.vocab_size))

  grad_b = jax.jit(jax.grad(loss_on_b))  # One compile serves both packed rows.
  g_packed, g_other = grad_b(params, packed), grad_b(params, other_a)
  g_alone = jax.jit(jax.grad(loss_alone))(params)
  for x, y, z in zip(jax.tree.leaves(g_packed), jax.tree.leaves(g_other),
                     jax.tree.leaves(g_alone)):
    np.testing.assert_allclose(x, z, atol=2e-6)  # b packed after a = b alone,
    np.testing.assert_array_equal(x, y)  # whatever a holds.
  # Without segment ids the same row lets b see a: the test can fail.
  logits = jax.jit(lambda p, b: model.forward(module, p, b)['logits'][0, 9:])
  unsegmented = logits(params, {'inputs': packed, 'positions': pos})
  segmented = logits(params, {'inputs': packed, 'positions': pos, 'segments': seg})
  assert np.abs(np.asarray(unsegmented - segmented)).max() > 1e-3


@pytest.mark.slow
def test_packed_step_sharded_equals_one_device(tmp_path):
  for i in range(8):
    (tmp_path / f'{i}.txt').write_text(f'doc {i}\nthe fox.\n' * (i + 1))
  c = text_config(tmp_path, str(tmp_path / '*.txt'), seq_len=24)
  c.data.text.validation_fraction = 0.3
  s = setup_lib.setup(c, str(tmp_path / 'w'), jax.devices()[:1])
  batch = next(iter(s.task.train_dataset(s.splits['train'], s.tokenizer, 24, 16, 0, fmt=s.fmt)))
  assert batch['segments'].max() > 1  # Packed rows.
  kind_checks.assert_sharded_step_equals_one_device(
      c, {k: batch[k] for k in lm.BATCH_KEYS if k in batch})


# Local files.

def test_local_files_give_both_splits_from_each_file(tmp_path):
  (tmp_path / 'a.txt').write_text(''.join(f'line {i} of a\n' for i in range(20)))
  (tmp_path / 'b.txt').write_text('héllo ' * 50)  # No line break: cut mid-text.
  (tmp_path / 'empty.txt').write_text('')  # A glob's empty file is skipped.
  c = text_config(tmp_path, str(tmp_path / '*.txt'))
  c.data.text.validation_fraction = 0.25
  splits = lm.load_splits(c, '')
  train, val = (s.__getitems__(list(range(len(s))))
                for s in (splits['train'], splits['validation']))
  assert len(train) == len(val) == 2
  assert train[0] + val[0] == ''.join(f'line {i} of a\n' for i in range(20))
  assert val[0].startswith('line 16 of a\n')  # Cut after a line break.
  assert train[1] + val[1] == 'héllo ' * 50
  c.data.text.paths = str(tmp_path / 'empty.txt')  # Named outright: an error.
  with pytest.raises(errors.InputError, match='empty.txt is empty'):
    lm.load_splits(c, '')


def test_invalid_utf8_stops_or_is_replaced(tmp_path):
  (tmp_path / 'bad.txt').write_bytes(b'good text\n' * 5 + b'\xff\xfe bad bytes\n' * 5)
  c = text_config(tmp_path, str(tmp_path / 'bad.txt'))
  with pytest.raises(errors.InputError, match=r"bad.txt is not valid UTF-8.*encoding_errors="
                     "'replace'"):
    lm.load_splits(c, '')
  c.data.text.encoding_errors = 'replace'
  splits = lm.load_splits(c, '')
  assert '\ufffd bad bytes' in splits['train'].__getitems__([0])[0]


def test_config_problems_of_the_text_task(tmp_path):
  (tmp_path / 'a.txt').write_text('some text\n' * 20)
  c = text_config(tmp_path, str(tmp_path / 'a.txt'), seq_len=0)
  c.data.text.update(long_docs='chop', encoding_errors='ignore')
  c.data.update(tokenizer='sentencepiece')
  c.data.sentencepiece.update(vocab_size=100, model_type='word')
  c.model.kind = 'lstm'
  found = '\n'.join(checks.problems(c, 1))
  for message in ('seq_len >= 2', "long_docs='chop'", "encoding_errors='ignore'",
                  "model_type='word'", 'vocab_size=100 is below 261',
                  "pack=True puts several documents in a row, which model.kind='lstm'"):
    assert message in found
  c = text_config(tmp_path, str(tmp_path / 'nothing*.txt'))
  assert any('matches no file' in p for p in checks.problems(c, 1))
  c = text_config(tmp_path, str(tmp_path / 'a.txt'))
  c.model.kind = 'encdec'
  assert any("no source for model.kind='encdec'" in p for p in checks.problems(c, 1))


def test_a_dry_run_trains_no_tokenizer_and_writes_nothing(tmp_path):
  from selffb.modes import dry_run  # pylint: disable=g-import-not-at-top
  (tmp_path / 'a.txt').write_text('some text\n' * 20)
  c = text_config(tmp_path, str(tmp_path / 'a.txt'), tokenizer='sentencepiece')
  plan = dry_run.plan(c, str(tmp_path / 'run'), 'train')
  assert plan['vocab_size'] == 1024 and os.listdir(tmp_path) == ['a.txt']


# SentencePiece.

def test_sentencepiece_trained_on_a_file_round_trips_and_is_reused(tmp_path, monkeypatch):
  corpus = ''.join(f'def f{i}(x):\n    return x * {i} + {i % 7}  # naïve\n\n' for i in range(300))
  (tmp_path / 'code.py').write_text(corpus)
  c = text_config(tmp_path, str(tmp_path / 'code.py'), tokenizer='sentencepiece', seq_len=32)
  c.data.sentencepiece.update(vocab_size=400, model_type='bpe')
  s = setup_lib.setup(c, str(tmp_path / 'run'))
  tok = s.tokenizer
  assert tok.vocab_size == s.model_cfg.vocab_size == 400
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  for sample in ('def f12(x):\n    return x * 12 + 5  # naïve\n', 'ünseen ☃ text\t!'):
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample and ids.min() > 2
  assert len(tok.encode(corpus[:500])) < len(corpus[:500].encode()) / 2  # Pieces, not bytes.
  cached = os.listdir(tmp_path / 'data' / 'sentencepiece')
  monkeypatch.setattr(tokenizers, 'train', lambda *a: pytest.fail('trained again'))
  again = setup_lib.setup(c, str(tmp_path / 'run2')).tokenizer
  assert again.proto == tok.proto and os.listdir(tmp_path / 'data' / 'sentencepiece') == cached
  c.data.sentencepiece.model = os.path.join(tmp_path / 'data' / 'sentencepiece', cached[0])
  assert tokenizers.vocab_size(c.data) == 400  # A given model: its own vocabulary.


@pytest.mark.e2e
def test_a_sentencepiece_model_that_does_not_match_the_checkpoint(tmp_path):
  (tmp_path / 'a.txt').write_text(''.join(f'sentence number {i} is here.\n' for i in range(400)))
  c = text_config(tmp_path, str(tmp_path / 'a.txt'), tokenizer='sentencepiece', seq_len=24)
  c.data.sentencepiece.update(vocab_size=290)
  c.train.num_steps, c.optim.warmup_steps = 4, 1
  from selffb.modes import train as train_mode  # pylint: disable=g-import-not-at-top
  run = str(tmp_path / 'run')
  train_mode.train_and_evaluate(c, run)
  assert os.path.isfile(os.path.join(run, tokenizers.RUN_FILE))
  c.train.num_steps = 8
  c.data.sentencepiece.vocab_size = 300  # Another vocabulary; the model keys are unchanged.
  with pytest.raises(errors.InputError, match=r'trained with the SentencePiece model saved as '
                     r'.*tokenizer.model has 290 pieces, not config.data.sentencepiece.vocab_'
                     'size=300'):
    train_mode.train_and_evaluate(c, run)
  # A given model file that is not the run's, even of the same size.
  (tmp_path / 'b.txt').write_text(''.join(f'another text {i} there.\n' for i in range(400)))
  other = text_config(tmp_path, str(tmp_path / 'b.txt'), tokenizer='sentencepiece', seq_len=24)
  other.data.sentencepiece.vocab_size = 290
  given = setup_lib.setup(other, str(tmp_path / 'other')).tokenizer.path
  c.data.sentencepiece.update(vocab_size=290, model=given)
  with pytest.raises(errors.InputError, match=r'tokenizer.model \(290 pieces\), not with '
                     r'.*sp_.*\.model \(290 pieces\)'):
    train_mode.train_and_evaluate(c, run)
  c.data.sentencepiece.model = ''
  assert train_mode.train_and_evaluate(c, run)['steps'] == 8  # The run's own copy resumes.


# Named tfds datasets.

def test_a_tfds_dataset_by_name_through_mock_data(tmp_path):
  c = text_config(tmp_path, '', tfds_name='tiny_shakespeare', seq_len=16)
  c.data.data_dir = str(tmp_path / 'tfds')
  with tfds.testing.mock_data(num_examples=12):
    s = setup_lib.setup(c, str(tmp_path / 'run'))
    assert len(s.splits['train']) == 12 and isinstance(s.splits['train'].__getitems__([0])[0],
                                                       str)
    batch = next(iter(s.task.train_dataset(s.splits['train'], s.tokenizer, 16, 16, 0,
                                           fmt=s.fmt)))
    assert batch['inputs'].shape == (16, 16)
    c.data.text.feature = 'content'
    with pytest.raises(errors.InputError, match=r"no feature 'content'; its features are "
                       r"\['text'\]"):
      lm.load_splits(c, '')


def test_named_dataset_errors(tmp_path):
  c = text_config(tmp_path, '', tfds_name='no_such_dataset_xyz')
  with pytest.raises(errors.InputError, match="'no_such_dataset_xyz' is not a dataset "
                     'tensorflow-datasets knows'):
    lm.load_splits(c, '')
  c.data.update(tfds_name='tiny_shakespeare', data_dir=str(tmp_path / 'empty'))
  c.data.text.prepare = False
  with pytest.raises(errors.InputError, match=r'tfds build tiny_shakespeare '
                     r'--file_format=array_record --data_dir='):
    lm.load_splits(c, '')
  assert not (tmp_path / 'data').exists()


class TinyCorpus(tfds.core.GeneratorBasedBuilder):
  """A two-split text corpus the tests prepare in ArrayRecord format."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'body': tfds.features.Text(), 'title': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(40), 'validation': self._generate_examples(8)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'body': f'body of document {i}. ' * (i % 5 + 1), 'title': f'doc {i}'}


def test_a_prepared_arrayrecord_dataset_with_split_syntax(tmp_path):
  data = tmp_path / 'tfds'
  TinyCorpus(data_dir=str(data), file_format='array_record').download_and_prepare()
  c = text_config(tmp_path, '', tfds_name='tiny_corpus', data_dir=str(data), seq_len=32)
  c.data.text.update(feature='body', train_split='train[:50%]')
  splits = lm.load_splits(c, '')
  assert (len(splits['train']), len(splits['validation'])) == (20, 8)
  assert all(d.startswith('body of document ') for d in splits['train'].__getitems__(range(20)))
  c.data.text.feature = ''  # No 'text' feature: the message lists the dataset's.
  with pytest.raises(errors.InputError, match=r"no feature 'text'; its features are \['body', "
                     r"'title'\]"):
    lm.load_splits(c, '')
  c.data.text.update(feature='body', validation_split='dev')
  with pytest.raises(errors.InputError, match=r"config.data.text.validation_split='dev': .*no "
                     r"such split.*\['train', 'validation'\]"):
    lm.load_splits(c, '')


# The job.

@pytest.mark.e2e
def test_a_text_run_trains_resumes_exactly_and_samples(tmp_path):
  from selffb.modes import train as train_mode  # pylint: disable=g-import-not-at-top
  (tmp_path / 'a.txt').write_text('the quick brown fox jumps over the lazy dog.\n' * 40)
  (tmp_path / 'b.txt').write_text('a stitch in time saves nine.\n' * 40)
  c = text_config(tmp_path, str(tmp_path / '*.txt'), seq_len=24)
  c.train.update(num_steps=12, eval_every=4, checkpoint_every=4)
  c.evals = {'samples': {'type': 'continuations', 'splits': 'validation', 'num': 2,
                         'prompt_tokens': 6}}
  c.sample.max_new_tokens = 8
  workdir = str(tmp_path / 'run')
  summary = train_mode.train_and_evaluate(c, workdir)
  assert summary['best_val_ce'] < 5.0  # Below uniform over bytes (log 259 = 5.56).
  assert len(summary['samples']['samples']) == 2
  assert [r['prompt'] for r in summary['samples']['samples']] == ['the q', 'a sti']
  kind_checks.assert_resume_equals_uninterrupted(c, workdir, tmp_path, 12)
