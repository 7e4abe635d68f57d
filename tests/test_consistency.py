"""The self-consistency score source (issue 30) and the exact checker kept out of selection."""
import csv
import json
import os
import types

import numpy as np
import pytest

from configs import tiny
from selffb.data import tokenizers
from selffb.feedback import scoring
from selffb.feedback import signals
from selffb.modes import consistency
from selffb.modes import selftrain
from selffb.tasks import addition
from selffb.tasks import addition_problems
from selffb.tasks import strings
from tests import test_selftrain


def test_consistency_values_are_exact_shares_of_the_view_answers():
  same = lambda a, b: a == b
  assert scoring.consistency_shares(['12', '13'], ['12', '12', '13', '99'], same) == [0.5, 0.25]
  assert scoring.consistency_shares(['7', '7'], ['7', '7', '7'], same) == [1.0, 1.0]
  assert scoring.consistency_shares(['7'], ['8'], same) == [0.0]
  assert scoring.consistency_shares(['7', '8'], [], same) == [1.0, 1.0]  # No view disagrees.
  loose = lambda a, b: a.rstrip('0') == b.rstrip('0')
  assert scoring.consistency_shares(['510'], ['51', '52'], loose) == [0.5]


@pytest.mark.parametrize('layout', ['plain', 'aligned'])
def test_addition_views_are_b_plus_a_in_the_same_layout(layout):
  c = tiny.get_config()
  c.data.addition.format = layout
  fmt, tok = addition.batch_format(c), tokenizers.ByteTokenizer()
  check = addition.consistency(c)
  ex = addition_problems.addition_example(123, 45, aligned=layout == 'aligned')
  swapped = addition_problems.addition_example(45, 123, aligned=layout == 'aligned')
  assert check.views(ex['prompt']) == [swapped['prompt']]
  assert {'plain': '321+54=', 'aligned': '3210+5400='}[layout] == ex['prompt']
  assert swapped['prompt'] == {'plain': '54+321=', 'aligned': '5400+3210='}[layout]
  assert check.same_answer(ex['answer'], swapped['answer'])  # The sum does not change.
  ids = lambda text: fmt.position_ids(tok.encode_prompt(text), tok).tolist()
  view = check.views(ex['prompt'])[0]
  assert ids(view) == ids(ex['prompt'])  # Both layouts: the view's ids are the prompt's.
  if layout == 'aligned':  # Restarted per operand: digit i of either operand has id i.
    assert ids(view) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 1]  # "=" predicts digit 1.


def test_strings_declare_permutations_for_sort_and_nothing_for_reverse():
  c = tiny.get_config()
  c.data.strings.op = 'reverse'
  assert strings.consistency(c) is None
  c.data.strings.op = 'sort'
  check = strings.consistency(c)
  views = check.views('cab=')
  assert views == ['bac=', 'abc='] and all(sorted(v[:-1]) == sorted('cab') for v in views)


def test_fused_score_with_the_consistency_weight_alone():
  weights = scoring.normalize_weights({'verifier': 0.0, 'vote': 0.0, 'consistency': 3.0})
  assert weights == {'consistency': 1.0}
  cand = {'consistency': 0.25, 'vote': 1.0, 'verifier': 1.0, 'format': 1.0}
  assert signals.fuse(cand, weights) == 0.25
  mixed = scoring.normalize_weights({'consistency': 1.0, 'vote': 1.0})
  assert signals.fuse(cand, mixed) == pytest.approx(0.625)


def test_consistency_weight_on_a_task_without_views_is_a_config_error(monkeypatch):
  c = tiny.get_config()
  c.data.task, c.data.strings.op = 'strings', 'reverse'
  weights = {'consistency': 1.0}
  [problem] = consistency.config_problems(c, strings, weights)
  assert "task 'strings'" in problem and 'weights.consistency' in problem
  c.data.strings.op = 'sort'
  assert consistency.config_problems(c, strings, weights) == []
  assert consistency.config_problems(c, strings, {'vote': 1.0}) == []
  # Through --mode=selftrain's own checks, on a self-training task that declares none.
  c = tiny.get_config()
  c.selftrain.weights.consistency = 1.0
  assert selftrain.inputs(c)[0] == []
  monkeypatch.setattr(addition, 'consistency', lambda config: None)
  [problem] = selftrain.inputs(c)[0]
  assert "task 'addition' declares no consistency views" in problem


def _fake_run(weights, exact, verifier):
  """A _Run over hand-made candidates: the aligned addition task and the byte tokenizer."""
  c = tiny.get_config()
  c.data.addition.format = 'aligned'
  c.selftrain.prompts_per_round, c.selftrain.samples_per_prompt = 12, 3
  c.selftrain.theta, c.selftrain.keep_top_fraction = 0.5, 0.75
  s = types.SimpleNamespace(config=c, task=addition, fmt=addition.batch_format(c),
                            tokenizer=tokenizers.ByteTokenizer())
  return selftrain._Run(s=s, workdir='', signals=None, val={}, tests={}, held_out=set(),
                        weights=scoring.normalize_weights(weights), verifier=verifier,
                        exact=exact, ratings={})


def _answers(texts, salt):
  """Deterministic answers of the right form, some right and some off in the carry digit."""
  out = []
  for i, t in enumerate(texts):
    right = addition_problems.addition_answer(t, aligned=True)
    wrong = right[:-1] + str((int(right[-1]) + 1) % 10)
    out.append(right if (i + salt) % 3 else wrong)
  return out


def _patch_sampler(monkeypatch, tok, k):
  def fake_generate(run, params, texts, level, r):
    answers = _answers([t for t in texts for _ in range(k)], salt=1)
    return [(tok.encode(a), np.zeros(len(a))) for a in answers]
  views_asked = []

  def fake_greedy(s, params, texts, level):
    views_asked.append(list(texts))
    return _answers(texts, salt=0)
  monkeypatch.setattr(selftrain, '_generate', fake_generate)
  monkeypatch.setattr(consistency, 'greedy_answers', fake_greedy)
  return views_asked


@pytest.mark.parametrize('weights', [{'vote': 1.0, 'verifier': 0.0},
                                     {'consistency': 1.0, 'format': 1.0, 'verifier': 0.0}])
def test_no_checker_call_feeds_selection_at_verifier_weight_zero(weights, monkeypatch):
  """The selection must be the same whether the exact checker says every answer is right or
  every one wrong, with a verifier that raises if the selection path ever calls it: only label
  precision (the measure) may change."""
  views_asked = _patch_sampler(monkeypatch, tokenizers.ByteTokenizer(), k=3)
  calls = []

  def never(prompt, answer):
    raise AssertionError(f'the verifier was asked about {prompt}{answer} at weight 0')

  def checker(verdict):
    return lambda prompt, answer: calls.append((prompt, answer)) or verdict

  got = {}
  for verdict in (True, False):
    run = _fake_run(weights, checker(verdict), never)
    got[verdict] = selftrain._sample_round(run, params=None, r=1, level=4)
  (yes, kept_yes), (no, kept_no) = got[True], got[False]
  strip = lambda rows: [{k: v for k, v in r.items() if k != 'correct'} for r in rows]
  assert strip(kept_yes) == strip(kept_no) and kept_yes  # The same selection, scores and Q.
  assert yes['label_precision'] == 1.0 and no['label_precision'] == 0.0
  assert len(calls) == 2 * yes['generated']  # The measure: once per candidate, both runs.
  assert all(r['scores']['verifier'] == 0.0 for r in kept_yes)
  assert bool(views_asked) == ('consistency' in weights)  # Views cost nothing unweighted.
  if views_asked:  # One batched call a round, the b+a view of each prompt.
    assert [len(v) for v in views_asked] == [12, 12] and 0 < yes['consistency'] < 1


def test_round_scorers_compare_each_candidate_with_its_prompts_views(monkeypatch):
  views_asked = _patch_sampler(monkeypatch, tokenizers.ByteTokenizer(), k=1)
  run = _fake_run({'consistency': 1.0}, lambda p, a: True, None)
  texts = ['2100+3000=', '9900+1000=']
  agree = consistency.round_scorers(run.s, run.weights, None, texts, 4)
  assert views_asked == [['3000+2100=', '1000+9900=']]
  view_answers = _answers(views_asked[0], salt=0)
  for f, answer in zip(agree, view_answers):
    assert f([answer, answer + 'x']) == [1.0, 0.0]
  assert consistency.round_scorers(run.s, {'vote': 1.0}, None, texts, 4) is None


@pytest.mark.e2e
def test_a_round_with_consistency_weight_one_reports_its_values(tmp_path):
  c = test_selftrain.selftrain_config(str(tmp_path / 'data'))
  c.selftrain.rounds, c.selftrain.control = 1, False
  c.selftrain.samples_per_prompt, c.selftrain.temperature = 1, 0.0
  c.selftrain.weights.update(vote=0.0, confidence_mean=0.0, consistency=1.0)
  workdir = str(tmp_path / 'run')
  rows = selftrain.run_selftrain(c, workdir)
  row = rows[1]
  kept = [json.loads(line) for line in open(os.path.join(workdir, 'rounds', 'r01',
                                                         'kept.jsonl'))]
  assert 0.0 <= row['consistency'] <= 1.0 and len(kept) == row['kept']
  for k in kept:  # One view (b + a): each value is 0 or 1, and it is Q.
    assert k['scores']['consistency'] in (0.0, 1.0) and k['q'] == k['scores']['consistency']
    assert k['scores']['verifier'] == 0.0
  with open(os.path.join(workdir, 'rounds.csv')) as f:
    table = list(csv.DictReader(f))
  assert float(table[1]['consistency']) == row['consistency']
  assert table[1]['label_precision'] != ''
  assert 'consistency' in open(os.path.join(workdir, 'rounds.md')).read()
