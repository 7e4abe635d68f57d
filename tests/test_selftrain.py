import csv
import json
import os

import numpy as np
import pytest

from configs import tiny
from selffb import errors
from selffb import runtime
from selffb.assemble import checks
from selffb.data import pipeline
from selffb.data import tokenizers
from selffb.feedback import scoring
from selffb.feedback import signals
from selffb.modes import dry_run
from selffb.modes import sample as sample_mode
from selffb.modes import selftrain
from selffb.modes import selftrain_report
from selffb.tasks import addition
from selffb.tasks import addition_problems
from selffb.tasks import seq


# ---- Pure scoring and selection. ----

def cand(answer, q, correct=True, prompt='p'):
  return {'answer': answer, 'q': q, 'correct': correct, 'prompt': prompt}


def test_vote_shares_are_the_share_of_identical_answers():
  assert scoring.vote_shares(['12', '12', '13', '12']) == [0.75, 0.75, 0.25, 0.75]
  assert scoring.vote_shares(['7']) == [1.0]
  assert scoring.vote_shares(['1', '2', '3', '1', '2']) == [0.4, 0.4, 0.2, 0.4, 0.4]


def test_majority_vote_keeps_the_most_common_answer():
  answers = ['561', '561', '560', '561', '999']
  shares = scoring.vote_shares(answers)
  weights = scoring.normalize_weights({'vote': 1.0})
  group = [dict(cand(a, signals.fuse({'vote': v}, weights)), vote=v)
           for a, v in zip(answers, shares)]
  kept = scoring.select([group], theta=0.5)
  assert [c['answer'] for c in kept] == ['561']
  assert kept[0]['q'] == pytest.approx(0.6)
  assert scoring.select([group], theta=0.61) == []  # 3 of 5 is below a 0.61 vote.


def test_fused_score_is_the_normalised_weighted_sum():
  weights = scoring.normalize_weights({'confidence_mean': 1.0, 'verifier': 3.0, 'vote': 0.0})
  assert weights == {'confidence_mean': 0.25, 'verifier': 0.75}
  scores = {'confidence_mean': 0.8, 'verifier': 1.0, 'vote': 0.2}
  assert signals.fuse(scores, weights) == pytest.approx(0.25 * 0.8 + 0.75)


@pytest.mark.parametrize('weights, match', [
    ({'confidence': 1.0}, 'unknown source'), ({'vote': -1.0}, '>= 0'), ({'vote': 0.0}, 'all 0')])
def test_bad_weights_are_named(weights, match):
  with pytest.raises(ValueError, match=match):
    scoring.normalize_weights(weights)


def test_select_best_per_prompt_then_threshold_then_top_fraction():
  groups = [
      [cand('a', 0.2), cand('b', 0.9), cand('c', 0.9)],  # Tie: the first of the best.
      [cand('d', 0.4)],  # Below theta.
      [cand('e', 0.7, correct=False), cand('f', 0.6)],
      [cand('g', 0.95)],
      [],
  ]
  kept = scoring.select(groups, theta=0.5)
  assert [c['answer'] for c in kept] == ['b', 'e', 'g']
  assert scoring.label_precision(kept) == pytest.approx(2 / 3)
  top = scoring.select(groups, theta=0.5, top_fraction=0.5)  # ceil(1.5) = 2, prompt order.
  assert [c['answer'] for c in top] == ['b', 'g']
  assert scoring.label_precision(top) == 1.0
  assert scoring.label_precision([]) is None


def test_addition_verifier_plain_and_aligned():
  plain = scoring.resolve_verifier('task', addition.verifier(seq.SequenceFormat()))
  assert plain('59+7=', '201') and not plain('59+7=', '2010') and not plain('59+7=', '200')
  aligned = scoring.resolve_verifier('task', addition.verifier(_aligned_format()))
  example = addition_problems.addition_example(95, 7, aligned=True)
  assert example == {'prompt': '590+700=', 'answer': '201'}
  assert aligned(example['prompt'], '201') and not aligned(example['prompt'], '200')
  assert addition_problems.addition_answer('9x+1=') is None
  assert addition_problems.addition_answer('12+3') is None
  assert scoring.resolve_verifier('', plain) is None
  custom = scoring.resolve_verifier('operator:eq', plain)
  assert custom('1', '1') and not custom('1', '2')
  with pytest.raises(ValueError, match='selftrain.verifier'):
    scoring.resolve_verifier('nope.module:f', plain)
  with pytest.raises(ValueError, match=r"verifier='math:sqrt' must take \(prompt, answer\)"):
    scoring.resolve_verifier('math:sqrt', plain)  # One argument: refused before any training.


def test_selftrain_inputs_are_checked_before_any_data_is_written(tmp_path):
  (tmp_path / 'a.txt').write_text('some text to model. ' * 20)
  c = tiny.get_config()
  c.data.update(task='text', seq_len=16, data_dir=str(tmp_path / 'data'))
  c.data.text.paths = str(tmp_path / 'a.txt')
  with pytest.raises(errors.ConfigError, match="task='text' has none"):
    selftrain.run_selftrain(c, str(tmp_path / 'run'))
  with pytest.raises(errors.ConfigError, match="task='text' has none"):
    dry_run.plan(c, str(tmp_path / 'run'), 'selftrain')  # The dry run checks as much.
  c = tiny.get_config()
  c.data.data_dir = str(tmp_path / 'data')
  c.selftrain.verifier = 'math:sqrt'
  with pytest.raises(ValueError, match='must take'):
    selftrain.run_selftrain(c, str(tmp_path / 'run'))
  assert not (tmp_path / 'data').exists() and not (tmp_path / 'run').exists()


def test_ratings_file_is_read_and_bad_lines_named(tmp_path):
  good = tmp_path / 'r.jsonl'
  good.write_text('{"prompt": "1+1=", "answer": "2", "rating": 0.75}\n\n')
  assert scoring.load_ratings(str(good)) == {('1+1=', '2'): 0.75}
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"prompt": "1+1=", "answer": "2", "rating": 0.5}\n{"prompt": "x", "rating": 2}\n')
  with pytest.raises(ValueError, match='bad.jsonl line 2'):
    scoring.load_ratings(str(bad))


def test_mixed_source_repeats_self_records_to_the_share():
  base = pipeline.ListSource([{'i': i} for i in range(90)])
  extra = [{'self': j} for j in range(10)]
  mixed = pipeline.mix(base, extra, share=0.5, cap=0)
  assert len(mixed) == 180  # 90 base + 10 self records repeated 9 times.
  got = mixed.__getitems__([0, 89, 90, 99, 100, 179])
  assert got == [{'i': 0}, {'i': 89}, {'self': 0}, {'self': 9}, {'self': 0}, {'self': 9}]
  assert pipeline.mix(base, extra, share=0.0, cap=0) is base
  capped = pipeline.mix(base, extra, share=0.5, cap=3)
  assert capped.parts[1].records == extra[-3:]


def test_drawn_problems_have_the_length_and_skip_held_out():
  rng = np.random.default_rng(0)
  exclude = {(a, b) for a in range(100, 1000) for b in range(1, 10)}
  pairs = addition_problems.draw_problems(rng, 3, 200, exclude)
  assert len(set(pairs)) == 200
  assert all(max(len(str(a)), len(str(b))) == 3 for a, b in pairs)
  assert not set(pairs) & exclude
  with pytest.raises(ValueError, match='prompts_per_round'):
    addition_problems.draw_problems(rng, 1, 80, set())


def test_selftrain_config_problems_are_all_named():
  c = tiny.get_config()
  c.selftrain.samples_per_prompt = 4  # Greedy: four identical candidates.
  c.selftrain.mix = 1.0
  c.selftrain.keep_top_fraction = 0.0
  c.selftrain.weights.vote = -1.0
  c.selftrain.warmup_steps = c.selftrain.steps_per_round
  c.selftrain.target_digits = 9  # Not a test length.
  found = '\n'.join(checks.problems(c, 1))
  for key in ('samples_per_prompt', 'selftrain.mix', 'keep_top_fraction', 'selftrain.weights',
              'selftrain.warmup_steps', 'selftrain.target_digits'):
    assert key in found


# ---- The aligned layout. ----

def _aligned_format():
  c = tiny.get_config()
  c.data.addition.format = 'aligned'
  c.data.addition.position_shift = 2
  return addition.batch_format(c)


def test_aligned_position_ids_restart_per_operand():
  tok = tokenizers.ByteTokenizer()
  layout = _aligned_format()
  ex = addition_problems.addition_example(12, 3, aligned=True)
  assert ex == {'prompt': '210+300=', 'answer': '510'}
  tokens = np.concatenate([tok.encode_prompt(ex['prompt']), tok.encode(ex['answer'])])
  #              bos 2 1 0 + 3 0 0 = 5 1 0
  expected = [0, 1, 2, 3, 0, 1, 2, 3, 1, 2, 3, 4]
  assert layout.position_ids(tokens, tok).tolist() == expected
  batch = seq.encode_batch([{**ex, 'digits': 2}], tok, 13, layout, shifts=[2])
  assert batch['inputs'][0, :11].tolist() == tokens[:-1].tolist()  # No eos appended.
  assert batch['targets'][0, 10] == tok.encode('0')[0]
  assert batch['loss_mask'][0].tolist() == [0] * 8 + [1] * 3 + [0] * 2
  shifted = [p + 2 if p else 0 for p in expected[:-1]]
  assert batch['positions'][0].tolist() == shifted + [-1, -1]


def test_training_shifts_are_reproducible_and_in_range(tmp_path):
  tok = tokenizers.ByteTokenizer()
  records = [{**addition_problems.addition_example(i, i + 7, aligned=True), 'digits': 2}
             for i in range(10, 74)]
  source = pipeline.ListSource([{k: v.encode() if isinstance(v, str) else v
                                 for k, v in r.items()} for r in records])
  layout = _aligned_format()
  ds = seq.train_dataset(source, tok, 12, 16, seed=3, fmt=layout)
  a, b = ds[4], ds[4]
  np.testing.assert_array_equal(a['positions'], b['positions'])
  starts = a['positions'][:, 1]  # Digit 1 of the first operand: 1 + shift.
  assert set(starts.tolist()) <= {1, 2, 3} and len(set(starts.tolist())) > 1
  host = seq.train_dataset(source, tok, 12, 16, seed=3, process_index=1, process_count=2,
                           fmt=layout)[4]
  np.testing.assert_array_equal(host['positions'], a['positions'][8:])


# ---- End to end: two rounds, and a resume in the middle of one. ----

def selftrain_config(data_dir):
  c = tiny.get_config()
  c.data.data_dir = data_dir
  c.data.addition.format = 'aligned'
  c.data.addition.position_shift = 1
  c.data.addition.test_digits = (2, 3, 4, 5)
  c.train.num_steps = 20
  c.selftrain.rounds = 2
  c.selftrain.start_digits = 0  # max_digits + 1 = 4.
  c.selftrain.control = True
  c.selftrain.prompts_per_round = 48
  c.selftrain.samples_per_prompt = 2
  c.selftrain.temperature = 1.0
  c.selftrain.weights.verifier = 0.0
  c.selftrain.weights.vote = 1.0
  c.selftrain.weights.confidence_mean = 1.0
  c.selftrain.theta = 0.0  # Keep every prompt's best candidate, right or wrong.
  c.selftrain.keep_top_fraction = 0.5
  c.selftrain.steps_per_round = 10
  c.selftrain.warmup_steps = 2
  c.selftrain.val_per_length = 16
  return c


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def uninterrupted(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('selftrain'))
  rows = selftrain.run_selftrain(selftrain_config(data_dir), workdir)
  return workdir, rows


def strip_times(rows):
  return [{k: v for k, v in r.items() if k != 'wall_s'} for r in rows]


@pytest.mark.e2e
def test_two_rounds_end_to_end(uninterrupted, data_dir):
  workdir, rows = uninterrupted
  assert [(r['run'], r['round']) for r in rows] == [
      ('self', 0), ('self', 1), ('self', 2), ('control', 1), ('control', 2)]
  assert [r.get('digits') for r in rows[:3]] == ['1-3', 4, 5]
  for r, row in enumerate(rows[1:3], 1):
    kept = [json.loads(line) for line in open(os.path.join(workdir, 'rounds', f'r{r:02d}',
                                                           'kept.jsonl'))]
    assert row['prompts'] == 48 and row['generated'] == 96
    assert row['kept'] == len(kept) == 24  # The top half of 48 prompts (theta 0).
    assert row['label_precision'] == pytest.approx(np.mean([k['correct'] for k in kept]))
    for k in kept:  # Sources, score and correctness are stored with every sample.
      assert set(k['scores']) == set(scoring.SOURCES)
      assert k['q'] == pytest.approx(0.5 * k['scores']['vote'] +
                                     0.5 * k['scores']['confidence_mean'])
      verdict = k['answer'] == addition_problems.addition_answer(k['prompt'], aligned=True)
      assert k['correct'] == verdict and k['digits'] == row['digits']
      well_formed = k['answer'].isdigit() and len(k['answer']) == row['digits'] + 1
      assert k['scores']['format'] == float(well_formed)
    assert row['steps'] == 10
  with open(os.path.join(workdir, 'rounds.csv')) as f:
    table = list(csv.DictReader(f))
  assert [t['run'] for t in table] == [r['run'] for r in rows]
  assert float(table[2]['acc_5']) == rows[2]['test']['5']
  assert 'label_precision' in open(os.path.join(workdir, 'rounds.md')).read()
  assert os.path.getsize(os.path.join(workdir, 'accuracy.png')) > 1000
  # A finished run reruns as a no-op: the same rows, nothing retrained.
  again = selftrain.run_selftrain(selftrain_config(data_dir), workdir)
  assert strip_times(again) == strip_times(rows)


class _StopAfter(runtime.StopSignals):
  """A SIGTERM that arrives at the n-th step the loop checks, across rounds."""
  budget = 0

  def stop_at(self, step):
    type(self).budget -= 1
    if type(self).budget == 0:
      self.received = 'SIGTERM'
    return self.received is not None


@pytest.mark.e2e
def test_resume_mid_round_gives_the_same_report(uninterrupted, data_dir, tmp_path, monkeypatch):
  _, rows = uninterrupted
  workdir = str(tmp_path)
  monkeypatch.setattr(runtime, 'StopSignals', _StopAfter)
  _StopAfter.budget = 20 + 10 + 4  # Round 0, round 1, then 4 steps into round 2.
  assert selftrain.run_selftrain(selftrain_config(data_dir), workdir) is None
  assert os.path.exists(os.path.join(workdir, 'rounds', 'r02', 'kept.jsonl'))
  assert not os.path.exists(os.path.join(workdir, 'rounds', 'r02', 'report.json'))
  _StopAfter.budget = -1  # Never again.
  resumed = selftrain.run_selftrain(selftrain_config(data_dir), workdir)
  assert strip_times(resumed) == strip_times(rows)


@pytest.mark.e2e
def test_eval_and_sample_modes_read_the_last_round(uninterrupted, data_dir):
  workdir, _ = uninterrupted
  assert selftrain.model_dir(workdir) == os.path.join(workdir, 'rounds', 'r02')
  samples = sample_mode.sample_checkpoint(selftrain_config(data_dir), workdir, ['2100+3000='])
  assert samples[0]['tokens'] == 4 and samples[0]['ended']  # Cut at the aligned answer length.
  for bad in ('abc', '+=', '21+3='):  # Would give a made-up answer, or NaN, if sampled.
    with pytest.raises(ValueError, match='not an aligned addition problem'):
      sample_mode.sample_checkpoint(None, workdir, [bad])
  long = '1' * 40 + '+' + '2' * 40 + '='  # Its 40-digit answer would be cut at 32 tokens.
  with pytest.raises(ValueError, match='40-token answer but config.sample.max_new_tokens=32'):
    sample_mode.sample_checkpoint(None, workdir, [long])


def test_candidate_format_and_confidence():
  tok = tokenizers.ByteTokenizer()
  eos = [tok.eos_id]

  def score(text, end, digits, layout, probs):
    tokens = np.concatenate([tok.encode(text), end]).astype(np.int32)
    return addition.candidate(tokens, np.log(np.asarray(probs)), digits, layout, tok)

  plain = seq.SequenceFormat()
  c = score('201', eos, 2, plain, [0.5, 1.0, 0.9, 0.6])
  assert c['answer'] == '201' and c['format'] == 1.0
  assert c['confidence_mean'] == pytest.approx(0.75) and c['confidence_min'] == pytest.approx(0.5)
  assert score('2010', eos, 2, plain, [1] * 5)['format'] == 0.0  # Too long.
  assert score('20', eos, 2, plain, [1] * 3)['format'] == 0.0  # A leading zero (reversed).
  assert score('201', [], 2, plain, [1] * 3)['format'] == 0.0  # Never ended.
  aligned = _aligned_format()
  c = score('2010', [], 3, aligned, [0.9, 0.8, 1.0, 0.7, 0.1])  # Cut at 4; the 5th is unused.
  assert c['answer'] == '2010' and c['format'] == 1.0
  assert c['confidence_min'] == pytest.approx(0.7)
  assert score('2a10', [], 3, aligned, [1] * 4)['format'] == 0.0


@pytest.mark.e2e
def test_round_zero_can_start_from_a_train_run(uninterrupted, data_dir, tmp_path):
  workdir, rows = uninterrupted
  c = selftrain_config(data_dir)
  c.selftrain.init_workdir = os.path.join(workdir, 'rounds', 'r00')
  c.selftrain.rounds = 1
  c.selftrain.control = False
  got = selftrain.run_selftrain(c, str(tmp_path))
  assert len(got) == 2 and got[0]['steps'] == 0
  assert got[0]['test'] == rows[0]['test'] and got[0]['val'] == rows[0]['val']
  # Round 1 interrupted after training: the rerun finds round 0's parameters in init_workdir.
  os.remove(os.path.join(tmp_path, 'rounds', 'r01', 'report.json'))
  again = selftrain.run_selftrain(c, str(tmp_path))
  assert strip_times(again) == strip_times(got)
  assert selftrain.model_dir(str(tmp_path)) == os.path.join(tmp_path, 'rounds', 'r01')


def test_rounds_figure_has_a_title_and_its_legend_outside_the_lines():
  rows = [{'run': 'self', 'round': r, 'digits': '1-4' if r == 0 else 5 + r,
           'test': {str(n): min(1.0, 0.2 * r + (n <= 4)) for n in range(1, 9)}} for r in range(4)]
  rows.append({'run': 'control', 'round': 3, 'digits': '1-4',
               'test': {str(n): float(n <= 4) for n in range(1, 9)}})
  fig = selftrain_report.figure(rows)
  ax = fig.axes[0]
  assert ax.get_title() and ax.get_xlabel() == 'operand digits'
  legend = ax.get_legend()
  labels = [t.get_text() for t in legend.get_texts()]
  assert labels == ['training lengths', 'round 0', 'round 1', 'round 2', 'round 3',
                    'control after 3 rounds']
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
