"""Fine-tuning from recorded feedback: the JSONL schema and its line-numbered errors, conversion
to rows with exact signals and weights, the batches, the preference losses against their
formulas, and a fine-tune end to end."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kind_checks

from configs import feedback_finetune
from configs import tiny
from selffb import errors
from selffb.assemble import checks
from selffb.data import pipeline
from selffb.data import tokenizers
from selffb.feedback import losses
from selffb.feedback import preference
from selffb.feedback import records
from selffb.modes import finetune as finetune_mode
from selffb.modes import train as train_mode
from selffb.tasks import addition_feedback
from selffb.tasks import feedback as task
from selffb.tasks import seq

RULES = records.Rules()
GOOD = {'prompt': 'p', 'response': 'r', 'rating': 3}


def write(path, lines):
  with open(path, 'wb') as f:
    for line in lines:
      f.write(line if isinstance(line, bytes) else (
          line if isinstance(line, str) else json.dumps(line)).encode() + b'\n')
  return str(path)


BAD_LINES = [  # (line, reason fragment), one malformed record each.
    ('{"prompt": "p", "response": ', 'not valid JSON'),
    ([1, 2], 'a record is a JSON object, got list'),
    ({'response': 'r', 'rating': 3}, "missing field 'prompt'"),
    ({'prompt': '  ', 'response': 'r', 'rating': 3}, "'prompt' is empty"),
    ({'prompt': 'p', 'response': 'r'}, 'no feedback'),
    ({'prompt': 'p', 'response': 'r', 'rating': 7}, 'rating 7 is outside the scale [1, 5]'),
    ({'prompt': 'p', 'response': 'r', 'rating': True}, 'rating must be a number'),
    ({'prompt': 'p', 'response': 'r', 'rating': float('nan')}, 'outside the scale'),
    ({'prompt': 'p', 'response': 'r', 'label': 'meh'}, "unknown label 'meh'"),
    ({'prompt': 'p', 'response': 'r', 'rating': 3, 'label': 'good'}, 'both rating and label'),
    ({'prompt': 'p', 'chosen': 'a', 'rejected': 'a'}, 'chosen and rejected are identical'),
    ({'prompt': 'p', 'chosen': 'a'}, "missing field 'rejected'"),
    ({'prompt': 'p', 'chosen': 'a', 'rejected': 'b', 'rating': 2}, 'chosen and rejected only'),
    ({'prompt': 'p', 'response': 'r', 'correction': 'r'}, 'correction is identical'),
    ({'prompt': 'p', 'response': 'r', 'raiting': 3}, "unknown field(s) ['raiting']"),
    ({'prompt': 'p', 'response': 'r', 'rating': 3, 'id': [1]}, "'id' must be a string or"),
    ('{"prompt": "p", "response": "r", "rating": 3, "id": NaN}', "'id' must be a string or"),
    ('{"prompt": "\\ud800", "response": "r", "rating": 3}', "'prompt' holds a lone surrogate"),
    (b'\xff\xfe{"prompt": "p"}', 'not UTF-8'),
]


def test_every_malformed_line_is_reported_with_its_number(tmp_path):
  lines = [GOOD]
  for line, _ in BAD_LINES:
    lines += [line, '']  # Blank lines are skipped but still numbered.
  path = write(tmp_path / 'f.jsonl', lines)
  with pytest.raises(errors.InputError) as e:
    records.read(path, RULES, 'strict')
  message = str(e.value)
  assert f'{len(BAD_LINES)} malformed line(s)' in message and "errors='skip'" in message
  count, problems = records.read(path, RULES, 'skip')
  assert count == 1
  assert [n for n, _ in problems] == [2 + 2 * i for i in range(len(BAD_LINES))]
  for (n, why), (_, fragment) in zip(problems, BAD_LINES):
    assert fragment in why, (n, why)
    assert f'line {n}: {why}' in message


def test_a_file_without_usable_records_is_an_error_even_when_skipping(tmp_path):
  with pytest.raises(errors.InputError, match='holds no feedback records'):
    records.read(write(tmp_path / 'empty.jsonl', ['', '  ']), RULES, 'skip')
  with pytest.raises(errors.InputError, match='no line is usable'):
    records.read(write(tmp_path / 'bad.jsonl', ['{']), RULES, 'skip')


def rows_of(record, **rules):
  groups = records.convert(7, record, records.Rules(**rules))
  return [([{k: r[k] for k in ('response', 'signal', 'weight', 'kto', 'category')}
            for r in rows], pair) for rows, pair in groups]


def test_each_record_kind_converts_to_exact_signals_and_weights():
  assert rows_of({'prompt': 'p', 'response': 'r', 'rating': 4}) == [(
      [{'response': 'r', 'signal': 0.75, 'weight': 1.0, 'kto': 0, 'category': 'rated_high'}],
      False)]
  assert rows_of({'prompt': 'p', 'response': 'r', 'rating': 0.2}, rating_scale=(0.0, 1.0))[0][
      0][0]['signal'] == 0.2
  assert rows_of({'prompt': 'p', 'response': 'r', 'label': 'bad'}) == [(
      [{'response': 'r', 'signal': 0.0, 'weight': 1.0, 'kto': 0, 'category': 'labelled_low'}],
      False)]
  assert rows_of({'prompt': 'p', 'response': 'r', 'label': 'good'}, label_loss='kto') == [(
      [{'response': 'r', 'signal': 1.0, 'weight': 0.0, 'kto': 1, 'category': 'labelled_high'}],
      False)]
  fix = {'prompt': 'p', 'response': 'r', 'correction': 'c', 'rating': 2}
  correction = {'response': 'c', 'signal': 1.0, 'weight': 1.5, 'kto': 0, 'category': 'correction'}
  for rule, weight in (('keep', 1.0), ('downweight', 0.2), ('drop', 0.0)):
    assert rows_of(fix, corrected_original=rule, correction_weight=1.5) == [([correction, {
        'response': 'r', 'signal': 0.25, 'weight': weight, 'kto': 0, 'category': 'replaced'}],
                                                                              False)]
  as_pair = rows_of(fix, correction_pairs=True)[1]
  assert as_pair == ([{'response': 'c', 'signal': 1.0, 'weight': 0.0, 'kto': 0,
                       'category': 'chosen'},
                      {'response': 'r', 'signal': 0.25, 'weight': 0.0, 'kto': 0,
                       'category': 'rejected'}], True)
  assert rows_of({'prompt': 'p', 'chosen': 'a', 'rejected': 'b'}, pair_sft_weight=0.5) == [(
      [{'response': 'a', 'signal': 1.0, 'weight': 0.5, 'kto': 0, 'category': 'chosen'},
       {'response': 'b', 'signal': 0.0, 'weight': 0.0, 'kto': 0, 'category': 'rejected'}], True)]


def test_bad_rules_are_config_errors():
  with pytest.raises(ValueError, match='rating_scale'):
    records.Rules(rating_scale=(5.0, 1.0))
  with pytest.raises(ValueError, match='label=value'):
    records.parse_labels('good,bad=0')
  with pytest.raises(ValueError, match='corrected_original'):
    records.Rules(corrected_original='hide')


def groups_of(*recs, **rules):
  return [g for i, r in enumerate(recs) for g in records.convert(i + 1, r, records.Rules(**rules))]


def test_units_keep_pairs_and_corrections_together_and_pack_singles():
  groups = groups_of({'prompt': 'a', 'response': 'x', 'rating': 5},
                     {'prompt': 'b', 'chosen': 'y', 'rejected': 'z'},
                     {'prompt': 'c', 'response': 'w', 'correction': 'v'},
                     {'prompt': 'd', 'response': 'u', 'label': 'bad'},
                     {'prompt': 'e', 'response': 't', 'rating': 1},
                     corrected_original='drop')
  every = task.units(groups)
  assert [(u['pair'], [r['response'] for r in u['rows']], u['live']) for u in every] == [
      (1, ['y', 'z'], (1, 1)), (0, ['v', 'w'], (1, 1)), (0, ['x', 'u'], (1, 1)),
      (0, ['t', 't'], (1, 0))]
  # Training leaves out the dropped original (weight 0): its correction is packed as a single.
  training = task.units(groups, training=True)
  assert [([r['response'] for r in u['rows']], u['live']) for u in training] == [
      (['y', 'z'], (1, 1)), (['x', 'v'], (1, 1)), (['u', 't'], (1, 1))]


def test_a_unit_batch_has_the_rows_columns():
  tok = tokenizers.ByteTokenizer()
  unit = task.units(groups_of({'prompt': 'ab', 'chosen': 'c', 'rejected': 'de'},
                              {'prompt': 'f', 'response': 'g', 'rating': 2}))
  unit = list(pipeline.read_all(task.with_reference(pipeline.ListSource(unit),
                                                    [-1.0, -2.0, -3.0, -4.0])))
  b = task.encode_units(unit, tok, 6, seq.SequenceFormat())
  np.testing.assert_array_equal(b['loss_mask'], [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0],
                                                 [0, 1, 1, 0, 0, 0], [0] * 6])
  np.testing.assert_array_equal(b['pair'], [1, 1, 0, 0])
  np.testing.assert_array_equal(b['rating'], [1, 0, 0.25, 0])
  np.testing.assert_array_equal(b['weight'], [0, 0, 1, 0])
  np.testing.assert_array_equal(b['ref_logp'], [-1, -2, -3, -4])
  np.testing.assert_array_equal(b['live'], [1, 1, 1, 0])
  d = jax.device_get(task.denominators(b))
  assert (d['tokens'], d['sft'], d['pairs'], d['kto']) == (7, 2, 1, 0)


def test_dpo_loss_is_its_formula_and_never_moves_the_reference():
  pc, pr, rc, rr, beta = -2.0, -3.5, -2.5, -3.0, 0.5
  loss, margin = preference.dpo_loss(pc, pr, rc, rr, beta)
  expected = beta * ((pc - rc) - (pr - rr))  # 0.5 * (0.5 + 0.5) = 0.5
  assert float(margin) == pytest.approx(0.5)
  assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-expected))), rel=1e-6)
  grads = jax.grad(lambda *a: preference.dpo_loss(*a, beta)[0], argnums=(0, 1, 2, 3))(
      pc, pr, rc, rr)
  s = 1 / (1 + math.exp(expected))  # d/dm -log sigmoid(m) = -(1 - sigmoid(m)).
  assert float(grads[0]) == pytest.approx(-beta * s, rel=1e-6)
  assert float(grads[1]) == pytest.approx(beta * s, rel=1e-6)
  assert float(grads[2]) == 0.0 and float(grads[3]) == 0.0


def test_kto_loss_is_its_formula():
  logp, ref = jnp.array([-1.0, -2.0, -3.0]), jnp.array([-1.5, -1.0, -3.0])
  desirable = jnp.array([1.0, -1.0, 0.0])
  z0 = preference.kto_reference_point(logp, ref, jnp.abs(desirable))
  assert float(z0) == 0.0  # Mean ratio (0.5 - 1) / 2 < 0 is floored at 0.
  got = preference.kto_loss(logp, ref, desirable, 2.0, 0.25, 0.5, 3.0)
  sig = lambda x: 1 / (1 + math.exp(-x))
  np.testing.assert_allclose(got, [0.5 * (1 - sig(2 * (0.5 - 0.25))),
                                   3.0 * (1 - sig(2 * (0.25 + 1.0))), 0.0], rtol=1e-6)
  g = jax.grad(lambda r: preference.kto_loss(logp, r, desirable, 2.0, 0.25).sum())(ref)
  np.testing.assert_array_equal(g, [0, 0, 0])


def fake_batch():
  """4 units (8 rows) of hand-made tokens with random logits."""
  tok = tokenizers.ByteTokenizer()
  groups = groups_of({'prompt': 'a', 'chosen': 'bc', 'rejected': 'd'},
                     {'prompt': 'e', 'chosen': 'f', 'rejected': 'gh'},
                     {'prompt': 'i', 'response': 'j', 'rating': 4},
                     {'prompt': 'k', 'response': 'l', 'label': 'good'},
                     {'prompt': 'm', 'response': 'n', 'correction': 'o'})
  source = task.with_reference(pipeline.ListSource(task.units(groups)), np.linspace(-3, -1, 8))
  return {k: jnp.asarray(v) for k, v in task.encode_units(
      list(pipeline.read_all(source)), tok, 4, seq.SequenceFormat()).items()}


def spec(**kw):
  base = dict(loss='confidence', gamma=2.0, weights=(('rating', 1.0),), blend='none',
              blend_steps=1.0, beta=0.3)
  return losses.FeedbackSpec(**{**base, **kw})


@pytest.mark.slow
def test_the_loss_is_the_weighted_ce_plus_dpo_and_adds_up_over_microbatches():
  b = fake_batch()
  logits = jax.random.normal(jax.random.key(0), b['inputs'].shape + (259,))
  fb = spec()
  loss, m = task.loss_fn({'logits': logits}, b, task.denominators(b), 0, fb=fb)
  logp = seq.signals.target_logprob(logits, b['targets'])
  per_row = jnp.sum(logp * b['loss_mask'], -1)
  sft_w = b['loss_mask'] * (b['weight'] * b['rating'])[:, None]
  sft = -jnp.sum(logp * sft_w) / jnp.sum(b['loss_mask'] * b['weight'][:, None])
  margins = [0.3 * ((per_row[i] - b['ref_logp'][i]) - (per_row[i + 1] - b['ref_logp'][i + 1]))
             for i in (0, 2)]
  dpo = np.mean([-jax.nn.log_sigmoid(x) for x in margins])
  assert float(m['dpo']) == pytest.approx(float(dpo), rel=1e-5)
  assert float(loss) == pytest.approx(float(sft + dpo), rel=1e-5)
  assert float(m['ce']) == pytest.approx(float(-jnp.sum(logp * b['loss_mask']) /
                                               jnp.sum(b['loss_mask'])), rel=1e-5)
  halves = [jax.tree.map(lambda x: x[s], b) for s in (slice(0, 4), slice(4, 8))]
  parts = [task.loss_fn({'logits': logits[s]}, h, task.denominators(b), 0, fb=fb)
           for s, h in zip((slice(0, 4), slice(4, 8)), halves)]
  assert float(parts[0][0] + parts[1][0]) == pytest.approx(float(loss), rel=1e-5)
  for key in ('ce', 'dpo', 'pref_accuracy', 'sft'):
    assert float(parts[0][1][key] + parts[1][1][key]) == pytest.approx(float(m[key]), rel=1e-5)


def feedback_config(tmp_path, **data):
  c = tiny.get_config()
  f = feedback_finetune.get_config()
  c.data.task = 'feedback'
  c.data.data_dir = str(tmp_path / 'data')
  c.feedback.update(loss=f.feedback.loss)
  c.feedback.weights.update(f.feedback.weights.to_dict())
  c.optim.feedback_scale = 'none'
  c.data.feedback.update(data)
  return c


def test_config_problems_name_the_keys(tmp_path):
  c = feedback_config(tmp_path, train_path=str(tmp_path / 'missing.jsonl'), errors='loose',
                      base_task='feedback')
  c.data.batch_size = 18
  c.train.grad_accum_steps = 2
  c.feedback.weights.verifier = 1.0
  found = '\n'.join(checks.problems(c, 1))
  c.data.feedback.label_loss = 'kto'
  c.feedback.preference.kto_desirable = float('nan')
  found = '\n'.join(checks.problems(c, 1))
  for fragment in ("train_path='", "errors='loose'", "base_task='feedback' is this task",
                   'divisible by 2 * grad_accum_steps=4', 'no verifier scores',
                   "label_loss='kto' takes its reference point from the whole batch",
                   'kto_undesirable >= 0, all finite'):
    assert fragment in found, fragment
  c = feedback_config(tmp_path, validation_path=write(tmp_path / 'v.jsonl', [GOOD]))
  c.data.feedback.labels = 'good=1,good=0'
  found = '\n'.join(checks.problems(c, 1))
  assert 'validation_path is given without train_path' in found
  assert 'names a label twice' in found


def test_records_too_long_for_the_model_are_problems_with_line_numbers(tmp_path):
  path = write(tmp_path / 'f.jsonl', [GOOD, {'prompt': 'p' * 40, 'response': 'r', 'rating': 1}])
  c = feedback_config(tmp_path, train_path=path)
  with pytest.raises(errors.InputError, match=r'line 2: prompt \+ response need 42 tokens, '
                     'over config.model.max_len=32'):
    task.load_splits(c, c.data.data_dir)


def test_train_mode_refuses_the_feedback_task(tmp_path):
  c = feedback_config(tmp_path, train_path=write(tmp_path / 'f.jsonl', [GOOD]))
  with pytest.raises(errors.ConfigError, match='--mode=finetune'):
    train_mode.train_and_evaluate(c, str(tmp_path / 'run'))


def test_the_addition_example_rates_answers_with_the_exact_check():
  c = feedback_finetune.get_config()
  c.data.feedback.example_prompts, c.data.feedback.example_digits = 8, (2,)
  c.data.addition.update(num_train=64, num_validation=8, num_test=4, test_digits=(2,))
  answers = lambda prompts, n: [addition_feedback.off_by_a_digit(  # Right at i = 0, 3, 6;
      seq_answer(p), np.random.default_rng(0)) if i % 3 else seq_answer(p) + '9'  # cut to length.
                                for i, p in enumerate(prompts)]
  got = addition_feedback.example_feedback(c, answers)
  assert [r['source'] for r in got] == ['model:rating', 'model:label', 'model:correction',
                                        'model:pair', 'model:rating', 'model:label',
                                        'model:rating', 'model:pair']  # A right answer
  # cannot be corrected (slot 6 is rated) and a right one is paired with a wrong one (3).
  for r in got:
    records.parse(json.dumps(r), RULES)  # Every record passes the schema.
    right = seq_answer(r['prompt'])
    response = r.get('response', r.get('rejected'))
    ok = response == right
    if 'rating' in r:
      assert r['rating'] == (5 if ok else 2)  # Off by one digit of three: a quarter up.
    if 'label' in r:
      assert r['label'] == ('good' if ok else 'bad')
    if 'correction' in r:
      assert r['correction'] == right and not ok
    if 'chosen' in r:
      assert r['chosen'] == right and r['rejected'] != right


def seq_answer(prompt):
  from selffb.tasks import addition_problems  # pylint: disable=g-import-not-at-top
  return addition_problems.addition_answer(prompt, aligned=True)


def preference_file(path, n, seed):
  """Records whose preferred answers follow one rule a small model learns in a few steps: the
  answer is the prompt's letters in upper case; the rejected ones in lower case."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    word = ''.join(rng.choice(list('abcdefgh'), 3))
    prompt, good, bad = f'{word}:', word.upper(), word
    kind = i % 4
    if kind == 0:
      out.append({'prompt': prompt, 'chosen': good, 'rejected': bad, 'id': i})
    elif kind == 1:
      out.append({'prompt': prompt, 'response': bad, 'correction': good, 'id': i})
    elif kind == 2:
      out.append({'prompt': prompt, 'response': good if i % 8 == 2 else bad,
                  'rating': 5 if i % 8 == 2 else 1, 'source': 'test'})
    else:
      out.append({'prompt': prompt, 'response': good if i % 8 == 3 else bad,
                  'label': 'good' if i % 8 == 3 else 'bad', 'source': 'test'})
  return write(path, out)


@pytest.mark.e2e
def test_a_fine_tune_lifts_corrections_and_held_out_preference_accuracy(tmp_path):
  c = feedback_config(tmp_path, train_path=preference_file(tmp_path / 'train.jsonl', 240, 0),
                      validation_path=preference_file(tmp_path / 'val.jsonl', 60, 1),
                      correction_pairs=True)
  c.data.batch_size = 32
  c.train.update(num_steps=60, eval_every=30, checkpoint_every=30)
  c.optim.lr = 3e-3
  summary = finetune_mode.finetune(c, str(tmp_path / 'run'))
  report = json.load(open(tmp_path / 'run' / 'finetune.json'))
  val = report['validation']
  assert val['preference_accuracy']['pairs'] == 30  # 15 pairs + 15 corrections as pairs.
  assert val['preference_accuracy']['after'] > val['preference_accuracy']['before']
  assert val['preference_accuracy']['after'] >= 0.9
  assert summary['feedback']['pref_accuracy'] == val['preference_accuracy']['after']
  fixes = report['train_all']['correction_above_replaced']
  assert fixes['count'] == 60 and fixes['after'] >= 0.9 > fixes['before']
  cats = val['categories']
  assert cats['correction']['after'] - cats['correction']['before'] > (
      cats['replaced']['after'] - cats['replaced']['before'])
  lines = [json.loads(x) for x in open(tmp_path / 'run' / 'logprobs.jsonl')]
  assert {x['split'] for x in lines} == {'validation', 'train_all'}
  assert all(x['id'] is not None or x['source'] == 'test' for x in lines)
  assert os.path.exists(tmp_path / 'run' / 'summary.json')
  assert 'Preference accuracy' in open(tmp_path / 'run' / 'finetune.md').read()
  from selffb.sweep import aggregate  # pylint: disable=g-import-not-at-top
  found = aggregate.train_metrics(str(tmp_path / 'run'))  # A finetune sweep's columns.
  assert found['feedback/pref_accuracy'] == val['preference_accuracy']['after']
  assert found['feedback/pref_accuracy_before'] == val['preference_accuracy']['before']
  assert found['steps'] == 60


@pytest.mark.slow
def test_the_step_sharded_or_accumulated_equals_one_device(tmp_path):
  c = feedback_config(tmp_path, train_path=preference_file(tmp_path / 'train.jsonl', 64, 0),
                      correction_pairs=True, label_loss='kto')
  c.feedback.preference.weight = 0.5
  s_splits = task.load_splits(c, c.data.data_dir)
  rng = np.random.default_rng(0)
  train = task.with_reference(s_splits['train'], -rng.uniform(1, 5, 2 * len(s_splits['train'])))
  tok = tokenizers.ByteTokenizer()
  it = pipeline.make_iterator(task.train_dataset(train, tok, 8, 16, 0))
  batch = {k: v for k, v in next(it).items() if k in task.BATCH_KEYS}
  assert batch['pair'].sum() > 0 and batch['weight'].sum() > 0 and np.abs(batch['kto']).sum()
  c.data.seq_len = 8
  keys = ('loss', 'ce', 'dpo', 'kto', 'sft', 'pref_accuracy')
  ref_params, ref_m = kind_checks.one_step(c, batch, jax.devices()[:1])
  assert float(ref_m['kto']) > 0
  c.mesh.update(data=4, fsdp=2)
  c.data.eval_batch_size = 32
  got = {'sharded': kind_checks.one_step(c, batch, jax.devices()[:8])}
  # KTO's reference point is the whole batch's, so accumulation is compared without it.
  c.mesh.update(data=1, fsdp=1)
  c.feedback.preference.kto_desirable = c.feedback.preference.kto_undesirable = 0.0
  c.data.feedback.label_loss = 'weighted'  # The config check refuses KTO with accumulation.
  no_kto = kind_checks.one_step(c, batch, jax.devices()[:1])
  c.train.grad_accum_steps = 2
  got['accumulated'] = kind_checks.one_step(c, batch, jax.devices()[:1])
  for name, (params, m) in got.items():
    want_params, want_m = no_kto if name == 'accumulated' else (ref_params, ref_m)
    for key in keys:
      assert float(m[key]) == pytest.approx(float(want_m[key]), rel=1e-4, abs=1e-6), (name, key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), params,
                 want_params)


def test_skip_trains_on_the_rest_and_strict_stops_before_anything_runs(tmp_path, caplog):
  lines = [{'prompt': f'q{i}', 'response': 'a', 'rating': 1 + i % 5} for i in range(20)]
  lines[3] = {'prompt': 'q3', 'response': 'a', 'rating': 9}
  c = feedback_config(tmp_path, train_path=write(tmp_path / 'f.jsonl', lines), errors='skip')
  splits = task.load_splits(c, c.data.data_dir)
  rows = sum(sum(u['live']) for s in ('train_all', 'validation')
             for u in pipeline.read_all(splits[s]))
  assert rows == 19
  assert 'skipped 1 of 20 records' in caplog.text and 'line 4: rating 9' in caplog.text
  c.data.feedback.errors = 'strict'
  workdir = tmp_path / 'run'
  with pytest.raises(errors.InputError, match='line 4: rating 9 is outside'):
    finetune_mode.finetune(c, str(workdir))
  assert not workdir.exists()  # Nothing written.


def test_the_example_file_is_named_by_what_makes_it():
  c = feedback_finetune.get_config()
  name = lambda: task.paths(c, '/d')[0]
  first = name()
  c.train.num_steps = 7  # Training settings do not make the file.
  assert name() == first
  for key, value in (('seed', 1), ('finetune.init_workdir', '/runs/x'),
                     ('data.feedback.example_prompts', 10), ('data.addition.format', 'plain'),
                     ('data.feedback.rating_scale', (0.0, 1.0))):
    section, _, leaf = key.rpartition('.')
    node = c
    for part in section.split('.') if section else []:
      node = node[part]
    node[leaf] = value
    assert name() != first, key
    first = name()


def test_the_starting_run_must_match_the_model_the_format_and_a_resumed_run(tmp_path):
  from configs import default  # pylint: disable=g-import-not-at-top
  init = tmp_path / 'init'
  init.mkdir()
  (init / 'config.json').write_text(json.dumps(default.get_config().to_dict()))
  c = feedback_finetune.get_config()
  c.finetune.init_workdir = str(init)
  finetune_mode.check_inputs(c)  # The default run: same model, aligned addition.
  c.data.feedback.base_task = ''
  with pytest.raises(errors.ConfigError, match='laid out as AlignedFormat.*set config.data.'
                     'feedback.base_task'):
    finetune_mode.check_inputs(c)
  c = feedback_finetune.get_config()
  c.finetune.init_workdir = str(init)
  c.model.d_model = 32
  with pytest.raises(errors.ConfigError, match='model.d_model 64 \\(run\\) vs 32'):
    finetune_mode.check_inputs(c)
  c.model.d_model = 64
  c.finetune.init_workdir = str(tmp_path / 'nothing')
  with pytest.raises(errors.ConfigError, match='holds no run'):
    finetune_mode.check_inputs(c)
  work = tmp_path / 'work'
  work.mkdir()
  (work / 'config.json').write_text(json.dumps(c.to_dict()))
  c.finetune.init_workdir = str(init)
  with pytest.raises(errors.ConfigError, match='reference of its preference terms'):
    finetune_mode.check_inputs(c, str(work))
