"""The encoder path: the bidirectional encoder and its heads, MLM masking, freezing, label
alignment, the BERT import against Hugging Face's outputs, init_from, selection by a task score,
and each encoder config training."""
import json
import os
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from configs import bert_conll2003
from configs import encoder_classify
from configs import encoder_mlm
from configs import encoder_ner
from configs import tiny
from selffb import checkpoint
from selffb import errors
from selffb.assemble import checks
from selffb.assemble import init_from
from selffb.assemble import setup as setup_lib
from selffb.data import masking
from selffb.data import synthetic
from selffb.data import tokenizers
from selffb.data import wordpiece
from selffb.feedback import losses as losses_lib
from selffb.models import bert_import
from selffb.models import encoder
from selffb.modes import train as train_mode
from selffb.tasks import classify
from selffb.tasks import labelled
from selffb.tasks import ner
from selffb.train import state as state_lib
from selffb.train import step as step_lib
import kind_checks

BERT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'tiny_bert')
BYTES = tokenizers.with_mask(tokenizers.ByteTokenizer())


def small(c, tmp_path, steps=12):
  """A seconds-long variant of an encoder config."""
  c.model.update(num_layers=2, d_model=32, num_heads=4, mlp_dim=64, dropout=0.0)
  c.data.update(batch_size=16, eval_batch_size=32, data_dir=str(tmp_path / 'data'))
  c.data.labelled.update(num_train=256, num_validation=64, num_test=64)
  c.train.update(num_steps=steps, eval_every=steps // 2, checkpoint_every=steps // 2,
                 log_every=2, patience=0)
  c.optim.update(warmup_steps=2, lr=3e-3)
  return c


def model_cfg(head='tag', **kw):
  fields = dict(vocab_size=40, num_layers=2, num_heads=2, d_model=16, mlp_dim=32, head=head,
                num_labels=0 if head == 'mlm' else 3, use_bias=True)
  fields.update(kw)
  return encoder.Config(**fields)


def init(cfg, seq_len=8):
  return nn.unbox(encoder.build(cfg).init(jax.random.key(0), jnp.zeros((1, seq_len),
                                                                      jnp.int32))['params'])


def train_losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [r['train/loss'] for r in rows if 'train/loss' in r], rows


# The model.

@pytest.mark.slow
@pytest.mark.parametrize('norm_position', ['pre', 'post'])
def test_attention_is_bidirectional_and_padding_is_masked(norm_position):
  cfg = model_cfg(norm_position=norm_position, positions='learned', max_len=8,
                  type_vocab_size=2)
  params, module = init(cfg), encoder.build(cfg)
  tokens = jnp.asarray([[5, 6, 7, 8, 9, 0, 0, 0]])
  pos = jnp.asarray([[0, 1, 2, 3, 4, -1, -1, -1]])
  hidden = lambda t: module.apply({'params': params}, t, pos)[0]['hidden']
  # d(hidden at slot 0) / d(the embedding of slot 3): a later token reaches an earlier output.
  probe = jnp.linspace(-1.0, 1.0, cfg.d_model)  # (A normed vector's plain sum is constant.)
  jac = jax.jacrev(lambda x: module.apply({'params': {**params, 'embed': {'embedding': x}}},
                                          tokens, pos)[0]['hidden'][0, 0] @ probe)(
                                              params['embed']['embedding'])
  assert np.abs(jac[8]).sum() > 1e-4  # Token 8 sits at slot 3.
  changed = tokens.at[0, 6].set(17)  # A padding slot.
  np.testing.assert_array_equal(hidden(tokens)[0, :5], hidden(changed)[0, :5])
  assert not np.allclose(hidden(tokens)[0, :5], hidden(tokens.at[0, 4].set(17))[0, :5])


@pytest.mark.slow
def test_packed_segments_do_not_see_each_other():
  cfg = model_cfg(head='mlm')
  params, module = init(cfg), encoder.build(cfg)
  b = jnp.asarray([[11, 12, 13]])
  alone = module.apply({'params': params}, b, jnp.arange(3)[None])[0]['hidden']
  for a in ([[4, 5]], [[30, 31]]):
    tokens = jnp.concatenate([jnp.asarray(a), b, jnp.zeros((1, 1), jnp.int32)], 1)
    pos, seg = jnp.asarray([[0, 1, 0, 1, 2, -1]]), jnp.asarray([[1, 1, 2, 2, 2, 0]])
    packed = module.apply({'params': params}, tokens, pos, seg)[0]['hidden']
    np.testing.assert_allclose(packed[0, 2:5], alone[0], atol=1e-6)


def test_heads_give_their_shapes():
  tokens, pos = jnp.ones((2, 6), jnp.int32), jnp.broadcast_to(jnp.arange(6), (2, 6))
  for head, shape in (('mlm', (2, 6, 40)), ('tag', (2, 6, 3)), ('classify', (2, 1, 3))):
    for pooling in ('first', 'mean'):
      cfg = model_cfg(head=head, pooling=pooling)
      out = encoder.build(cfg).apply({'params': init(cfg)}, tokens, pos)[0]
      assert out['logits'].shape == shape and out['logits'].dtype == jnp.float32


# Masked LM.

def mask_spec(**kw):
  starts, ends = BYTES.word_boundaries()
  fields = dict(rate=0.15, mask=0.8, random=0.1, whole_word=False, mask_id=BYTES.mask_id,
                specials=BYTES.special_ids, regular=BYTES.regular_ids, starts=starts, ends=ends)
  fields.update(kw)
  return masking.MaskSpec(**fields)


def test_mlm_masking_statistics_on_a_fixed_seed():
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 259, (200, 100)).astype(np.int32)
  tokens[:, 0], tokens[:, 90:] = BYTES.bos_id, BYTES.pad_id
  valid = np.arange(100)[None] < 90
  inputs, loss_mask = masking.mask_tokens(tokens, valid, mask_spec(), np.random.default_rng(1))
  chosen = loss_mask > 0
  assert not chosen[:, 0].any() and not chosen[:, 90:].any()  # bos and padding never.
  assert abs(chosen.sum() / (200 * 89) - 0.15) < 0.01
  masked = (inputs == BYTES.mask_id) & chosen
  kept = (inputs == tokens) & chosen
  assert abs(masked.sum() / chosen.sum() - 0.8) < 0.02
  # Kept: the 10% left alone plus the random draws that hit the same token (1 in 256).
  assert abs(kept.sum() / chosen.sum() - 0.1 - 0.1 / 256) < 0.015
  assert ((inputs != tokens) == (chosen & ~kept)).all()  # Only chosen tokens change.
  assert (inputs[chosen & ~masked & ~kept] >= 3).all()  # Random ones are regular bytes.
  again = masking.mask_tokens(tokens, valid, mask_spec(), np.random.default_rng(1))
  np.testing.assert_array_equal(again[0], inputs)


def test_whole_word_masking_chooses_every_piece_of_a_word():
  text = 'the cat sat on the warm mat ' * 20
  tokens = np.asarray([BYTES.encode(text)] * 50)
  inputs, loss_mask = masking.mask_tokens(tokens, np.ones(tokens.shape, bool),
                                          mask_spec(whole_word=True), np.random.default_rng(2))
  words = masking.word_ids(tokens, *BYTES.word_boundaries())
  np.testing.assert_array_equal(words[0, :8], [0, 0, 0, 1, 2, 2, 2, 3])
  for row in range(50):
    for w in np.unique(words[row]):
      assert len(set(loss_mask[row][words[row] == w])) == 1  # All or none of a word.
  assert 0.1 < loss_mask.mean() < 0.2


def test_wordpiece_word_boundaries_follow_continuation_pieces():
  tok = wordpiece.WordPieceTokenizer(BERT)
  ids = tok.encode('Anna walked')
  pieces = [tok.tok.id_to_token(int(i)) for i in ids]
  words = masking.word_ids(np.asarray([ids]), *tok.word_boundaries())[0]
  assert words[0] == 0 and words[-1] == words.max() and any(p.startswith('##') for p in pieces)
  assert all((p.startswith('##')) == (i > 0 and words[i] == words[i - 1])
             for i, p in enumerate(pieces))


# Labels on pieces.

def test_ner_labels_go_on_each_word_s_first_piece():
  ids, labels = ner.align(['Anna', 'met', 'Bo'], [1, 0, 1], BYTES, 32)
  sep, b = BYTES.word_separator[0], lambda s: list(BYTES.encode(s))
  assert ids.tolist() == [BYTES.bos_id] + b('Anna') + [sep] + b('met') + [sep] + b('Bo') + [
      BYTES.eos_id]
  assert labels.tolist() == [-1, 1, -1, -1, -1, -1, 0, -1, -1, -1, 1, -1, -1]
  tok = wordpiece.WordPieceTokenizer(BERT)
  ids, labels = ner.align(['Anna', 'walked', 'home'], [1, 0, 0], tok, 32)
  pieces = [tok.encode(w).tolist() for w in ('Anna', 'walked', 'home')]
  assert len(pieces[1]) > 1  # 'walk', '##ed'
  assert ids.tolist() == [tok.bos_id] + sum(pieces, []) + [tok.eos_id]
  expect = [-1] + sum(([t] + [-1] * (len(p) - 1) for t, p in zip([1, 0, 0], pieces)), []) + [-1]
  assert labels.tolist() == expect
  ids, labels = ner.align(['Anna', '\u200b', 'home'], [1, 2, 0], tok, 32)  # Nothing for '\u200b'.
  assert ids.tolist()[1:4] == [pieces[0][0], tok.unk_id, pieces[2][0]]
  assert labels.tolist()[:4] == [-1, 1, 2, 0]
  cut_ids, cut = ner.align(['Anna', 'met', 'Bo'], [1, 0, 1], BYTES, 6)  # Cut, eos kept.
  assert len(cut_ids) == 6 and cut_ids[-1] == BYTES.eos_id and cut.tolist()[:2] == [-1, 1]
  np.testing.assert_array_equal(ner.word_predictions(np.asarray([0, 2, 0, 5]),
                                                     np.asarray([0, 1, 0, 1]), 3), [2, 5, 0])


def test_synthetic_splits_are_disjoint_and_test_names_unseen():
  key = lambda r: repr(sorted(r.items()))
  for make, salt in ((ner.make, 43), (classify.make, 41)):
    made = synthetic.examples(make, 0, {'train': 400, 'validation': 100, 'test': 100}, salt)
    held = {key(r) for r in made['validation'] + made['test']}
    assert len(held) == 200 and not held & {key(r) for r in made['train']}
  made = synthetic.examples(ner.make, 0, {'train': 400, 'validation': 100, 'test': 100}, 43)
  names = lambda split: {w for r in made[split] for w in r['words'] if w in synthetic.NAMES}
  assert names('test') and names('validation') and not names('train') & (
      names('test') | names('validation'))


def test_classify_loss_is_per_sequence_with_the_feedback_arm():
  batch = classify.encode([{'text': 'the food was good .', 'label': 2}], BYTES, 32)
  assert batch['targets'].shape == (1, 1) and batch['loss_mask'].tolist() == [[1.0]]
  logits = jnp.log(jnp.asarray([[[0.2, 0.3, 0.5]]]))
  spec = losses_lib.FeedbackSpec.from_config(tiny.get_config().feedback, 10)  # one_minus, prob.
  loss, aux = classify.loss_fn({'logits': logits}, batch, 1.0, 0, fb=spec)
  np.testing.assert_allclose(aux['ce'], -np.log(0.5), rtol=1e-6)
  np.testing.assert_allclose(loss, -np.log(0.5) * (1 - 0.5), rtol=1e-6)  # CE * (1 - p).


# Freezing.

@pytest.mark.slow
@pytest.mark.parametrize('freeze,frozen', [
    ('head_only', {'embed', 'layer_0', 'layer_1', 'final_norm'}),
    ('top_k', {'embed', 'layer_0'}),
    ('embeddings', {'embed'})])
def test_freezing_leaves_frozen_parameters_bit_identical(tmp_path, freeze, frozen):
  c = small(encoder_ner.get_config(), tmp_path)
  c.optim.update(freeze=freeze, top_k=1)
  s = setup_lib.setup(c, str(tmp_path / 'w'), jax.devices()[:1])
  state, state_sh = state_lib.init_state(s, jax.random.key(0))
  before = jax.device_get(state.params)
  p_train, _ = step_lib.compile_steps(s, state_sh)
  it = iter(s.task.train_dataset(s.splits['train'], s.tokenizer, s.seq_len, 16, 0, fmt=s.fmt))
  for i in range(3):
    batch = {k: v for k, v in next(it).items() if k in s.task.BATCH_KEYS}
    state, _ = p_train(state, batch, jax.random.key(i))
  after = jax.device_get(state.params)
  assert set(after) == {'embed', 'layer_0', 'layer_1', 'final_norm', 'tagger'}
  for name in after:
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[name]),
                                                 jax.tree.leaves(after[name]))]
    assert all(same) if name in frozen else not any(same), name
  adam = [x for x in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(x, optax.ScaleByAdamState)]
  assert {k for k in adam[0].mu if jax.tree.leaves(adam[0].mu[k])} == set(after) - frozen


def test_freezing_needs_an_encoder_and_a_valid_k(tmp_path):
  c = tiny.get_config()
  c.optim.freeze = 'head_only'
  with pytest.raises(errors.ConfigError, match="model.kind='encoder'"):
    checks.check_config(c, 1)
  c = small(encoder_ner.get_config(), tmp_path)
  c.optim.update(freeze='top_k', top_k=3)
  with pytest.raises(errors.ConfigError, match='top_k=3.*1..2'):
    checks.check_config(c, 1)


# Config checks.

def test_encoder_task_config_problems(tmp_path):
  c = small(encoder_ner.get_config(), tmp_path)
  c.model.head = 'classify'
  c.train.select_metric = 'auc'
  with pytest.raises(errors.ConfigError) as e:
    checks.check_config(c, 1)
  assert "needs config.model.head='tag'" in str(e.value)
  assert "select_metric='auc'" in str(e.value) and "'f1'" in str(e.value)
  c = small(encoder_ner.get_config(), tmp_path)
  c.model.num_labels = 5
  with pytest.raises(errors.ConfigError, match=r'has 7 labels.*num_labels=7, not 5'):
    setup_lib.setup(c, str(tmp_path / 'w'), jax.devices()[:1])
  c = small(encoder_ner.get_config(), tmp_path)
  c.model.kind = 'decoder'
  with pytest.raises(errors.ConfigError, match="set config.model.kind='encoder'"):
    checks.check_config(c, 1)
  c = tiny.get_config()
  c.data.task, c.model.kind = 'text', 'encoder'  # Next-token targets it could see.
  with pytest.raises(errors.ConfigError, match="kind='encoder' trains with the encoder tasks"):
    checks.check_config(c, 1)


def test_the_mask_token_tokenizer_pickles_for_worker_processes():
  again = pickle.loads(pickle.dumps(BYTES))
  assert (again.mask_id, again.vocab_size) == (259, 260)
  np.testing.assert_array_equal(again.encode('ab'), BYTES.encode('ab'))


# BERT import.

def reference_inputs():
  ref = np.load(os.path.join(BERT, 'reference.npz'))
  valid = ref['attention_mask'] > 0
  return ref, valid, np.where(valid, np.arange(valid.shape[1])[None], -1)


@pytest.mark.parametrize('head', ['mlm', 'classify'])
def test_imported_tiny_bert_reproduces_the_reference_outputs(head):
  hf = bert_import.read_config(BERT)
  fields = {k: v for k, v in bert_import.model_overrides(hf).items() if k != 'kind'}
  cfg = encoder.Config(vocab_size=hf['vocab_size'], head=head,
                       num_labels=3 if head == 'classify' else 0, **fields)
  fresh = init(cfg)
  params, taken, kept, left = init_from.merge(fresh, encoder.load_checkpoint(BERT))
  assert kept == (['classifier'] if head == 'classify' else [])
  assert left == (['mlm_transform', 'mlm_norm', 'mlm_bias'] if head == 'classify'
                  else ['pooler'])
  ref, valid, pos = reference_inputs()
  out = encoder.build(cfg).apply({'params': params}, ref['input_ids'], pos, None,
                                 ref['token_type_ids'])[0]
  np.testing.assert_allclose(np.asarray(out['hidden'])[valid], ref['hidden'][valid], atol=1e-5)
  if head == 'mlm':
    np.testing.assert_allclose(np.asarray(out['logits'])[valid], ref['mlm_logits'][valid],
                               atol=1e-5)
  else:
    np.testing.assert_allclose(out['pooled'], ref['pooled'], atol=1e-5)


def test_a_bert_checkpoint_needs_the_encoder_it_describes(tmp_path):
  c = bert_conll2003.get_config(BERT)
  assert c.model.num_layers == 2 and c.model.d_model == 32 and c.model.norm_eps == 1e-12
  assert init_from.problems(c) == []
  c.model.d_model = 64
  assert 'config.model.d_model=32 (not 64)' in init_from.problems(c)[0]
  c.model.init_from = str(tmp_path)
  assert 'neither a run' in init_from.problems(c)[0]
  with pytest.raises(errors.InputError, match='is not a Hugging Face BERT checkpoint'):
    bert_import.read_config(str(tmp_path))


# Jobs.

@pytest.mark.e2e
def test_bert_conll2003_fine_tunes_the_tiny_checkpoint_on_mock_data(tmp_path):
  c = small(bert_conll2003.get_config(BERT), tmp_path, steps=16)
  c.model.update(num_layers=2, d_model=32, num_heads=4, mlp_dim=64)  # The checkpoint's.
  with tfds.testing.mock_data(num_examples=32):
    summary = train_mode.train_and_evaluate(c, str(tmp_path / 'run'))
  losses, _ = train_losses(str(tmp_path / 'run'))
  assert losses[-1] < losses[0]
  assert set(summary['report']['test']['scores']) == set(ner.SCORES)
  tags = summary['report']['test']['tokens']['classes']
  assert list(tags) == ['O', 'B-PER', 'I-PER', 'B-ORG', 'I-ORG', 'B-LOC', 'I-LOC', 'B-MISC',
                        'I-MISC']


@pytest.fixture(scope='module')
def mlm_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('mlm')
  (tmp / 'a.txt').write_text('the quick brown fox jumps over the lazy dog.\n' * 60)
  (tmp / 'b.txt').write_text('a stitch in time saves nine, they say.\n' * 60)
  c = small(encoder_mlm.get_config(), tmp, steps=16)
  c.data.update(seq_len=32)
  c.data.text.paths = str(tmp / '*.txt')
  workdir = str(tmp / 'run')
  return c, workdir, train_mode.train_and_evaluate(c, workdir)


@pytest.mark.e2e
def test_the_mlm_job_trains(mlm_run):
  _, workdir, summary = mlm_run
  losses, _ = train_losses(workdir)
  assert losses[-1] < losses[0] - 0.5
  assert summary['masked']['validation']['ce'] < np.log(260) - 1.0


@pytest.mark.e2e
def test_the_mlm_job_resumes_exactly(mlm_run, tmp_path):
  c, workdir, _ = mlm_run
  kind_checks.assert_resume_equals_uninterrupted(c, workdir, tmp_path, 16)


@pytest.mark.e2e
def test_ner_from_the_mlm_run_selects_by_entity_f1(mlm_run, tmp_path):
  _, mlm_dir, _ = mlm_run
  c = small(encoder_ner.get_config(), tmp_path, steps=16)
  c.train.eval_every = 4
  c.model.init_from = mlm_dir
  workdir = str(tmp_path / 'run')
  summary = train_mode.train_and_evaluate(c, workdir)
  losses, rows = train_losses(workdir)
  assert losses[-1] < losses[0]
  f1 = {r['step']: r['val/f1'] for r in rows if 'val/f1' in r}
  best = max(f1, key=lambda k: (f1[k], -k))
  assert summary['best_step'] == best and summary['best_val_f1'] == f1[best]
  report = summary['report']['test']
  assert set(report['entities']['classes']) <= {'PER', 'LOC', 'ORG'}
  assert report['scores']['f1'] == report['entities']['micro']['f1']
  # The body came from the MLM run, the tag head did not.
  s = setup_lib.setup(c, workdir, jax.devices()[:1])
  fresh = jax.device_get(state_lib.init_state(s, jax.random.split(jax.random.key(0))[0])[0].params)
  start = init_from.start_params(s, fresh)
  mlm_params = checkpoint.host_params(mlm_dir)[1]
  np.testing.assert_array_equal(start['layer_0']['attn']['query']['kernel'],
                                mlm_params['layer_0']['attn']['query']['kernel'])
  np.testing.assert_array_equal(start['tagger']['kernel'], fresh['tagger']['kernel'])


@pytest.mark.e2e
def test_the_classify_job_trains_and_reports(tmp_path):
  c = small(encoder_classify.get_config(), tmp_path, steps=16)
  workdir = str(tmp_path / 'run')
  summary = train_mode.train_and_evaluate(c, workdir)
  losses, _ = train_losses(workdir)
  assert losses[-1] < losses[0]
  report = summary['report']['test']
  assert list(report['classes']['classes']) == ['negative', 'neutral', 'positive']
  assert report['scores']['accuracy'] == report['classes']['accuracy']
  assert report['classes']['count'] == 64


@pytest.mark.slow
def test_an_encoder_step_sharded_equals_one_device(tmp_path):
  c = small(encoder_ner.get_config(), tmp_path)
  s = setup_lib.setup(c, str(tmp_path / 'w'), jax.devices()[:1])
  batch = next(iter(s.task.train_dataset(s.splits['train'], s.tokenizer, s.seq_len, 16, 0,
                                         fmt=s.fmt)))
  kind_checks.assert_sharded_step_equals_one_device(
      c, {k: batch[k] for k in labelled.BATCH_KEYS})
