"""Tests of selffb.evaluators.prf: exact hand-counted reports and seqeval against bio_spans."""
import numpy as np
import pytest

from selffb.evaluators import prf


def _check(m, precision, recall, f1, support):
  assert m['precision'] == pytest.approx(precision, abs=1e-12)
  assert m['recall'] == pytest.approx(recall, abs=1e-12)
  assert m['f1'] == pytest.approx(f1, abs=1e-12)
  assert m['support'] == support and isinstance(m['support'], int)


def test_class_report_three_classes():
  # c is never predicted.
  r = prf.class_report([0, 0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 0, 1, 1], ['a', 'b', 'c'])
  _check(r['classes']['a'], 2 / 3, 2 / 3, 2 / 3, 3)
  _check(r['classes']['b'], 1 / 4, 1 / 2, 1 / 3, 2)
  _check(r['classes']['c'], 0.0, 0.0, 0.0, 2)
  _check(r['micro'], 3 / 7, 3 / 7, 3 / 7, 7)
  _check(r['macro'], 11 / 36, 7 / 18, 1 / 3, 7)
  assert r['accuracy'] == pytest.approx(3 / 7) and r['count'] == 7


def test_class_report_excludes_o():
  o, per, loc = 0, 1, 2
  y_true = [o, o, o, per, per, loc, loc, o, loc]
  y_pred = [o, per, o, per, o, loc, per, o, o]
  r = prf.class_report(np.array(y_true), np.array(y_pred), ['O', 'PER', 'LOC'], exclude=('O',))
  _check(r['classes']['O'], 3 / 5, 3 / 4, 2 / 3, 4)
  _check(r['classes']['PER'], 1 / 3, 1 / 2, 2 / 5, 2)
  _check(r['classes']['LOC'], 1.0, 1 / 3, 1 / 2, 3)
  _check(r['micro'], 1 / 2, 2 / 5, 4 / 9, 5)
  _check(r['macro'], 2 / 3, 5 / 12, 9 / 20, 5)
  assert r['accuracy'] == pytest.approx(5 / 9) and r['count'] == 9
  assert r['micro']['f1'] != pytest.approx(r['accuracy'])


def test_entity_report_errors():
  true = [['B-PER', 'I-PER', 'O', 'B-LOC', 'O'],
          ['B-ORG', 'I-ORG', 'O', 'B-PER', 'O'],
          ['B-LOC', 'O', 'O', 'O'],
          ['I-PER', 'I-PER', 'B-PER', 'O']]  # IOB1: two PER entities.
  pred = [['B-PER', 'O', 'O', 'B-LOC', 'O'],  # PER ends early; LOC right.
          ['B-LOC', 'I-LOC', 'O', 'B-PER', 'O'],  # ORG span typed LOC; PER right.
          ['O', 'O', 'B-ORG', 'I-ORG'],  # LOC missed; spurious ORG.
          ['I-PER', 'I-PER', 'I-PER', 'O']]  # One PER over both.
  r = prf.entity_report(true, pred)
  assert set(r['classes']) == {'PER', 'LOC', 'ORG'}
  _check(r['classes']['PER'], 1 / 3, 1 / 4, 2 / 7, 4)
  _check(r['classes']['LOC'], 1 / 2, 1 / 2, 1 / 2, 2)
  _check(r['classes']['ORG'], 0.0, 0.0, 0.0, 1)
  _check(r['micro'], 1 / 3, 2 / 7, 4 / 13, 7)
  _check(r['macro'], 5 / 18, 1 / 4, 11 / 42, 7)
  assert r['count'] == 4 and 'accuracy' not in r
  assert all(type(v) in (float, int) for m in r['classes'].values() for v in m.values())


def test_bio_spans():
  assert prf.bio_spans(['I-PER', 'I-PER', 'B-PER', 'I-LOC', 'I-LOC', 'O', 'I-ORG', 'B-ORG']) == {
      ('PER', 0, 2), ('PER', 2, 3), ('LOC', 3, 5), ('ORG', 6, 7), ('ORG', 7, 8)}
  assert prf.bio_spans(['O', 'O']) == set()


def test_entity_report_matches_bio_spans():
  rng = np.random.default_rng(0)
  vocab = ['O'] + [f'{p}-{t}' for t in ('PER', 'LOC', 'ORG') for p in 'BI']
  true, pred = [], []
  for _ in range(200):
    t = list(rng.choice(vocab, size=rng.integers(1, 13)))
    p = [str(rng.choice(vocab)) if rng.random() < 0.3 else tag for tag in t]
    true.append([str(tag) for tag in t])
    pred.append(p)
  tp = npred = ntrue = 0
  for t, p in zip(true, pred):
    ts, ps = prf.bio_spans(t), prf.bio_spans(p)
    tp, npred, ntrue = tp + len(ts & ps), npred + len(ps), ntrue + len(ts)
  assert 0 < tp < min(npred, ntrue)
  micro = prf.entity_report(true, pred)['micro']
  assert abs(micro['precision'] - tp / npred) < 1e-12
  assert abs(micro['recall'] - tp / ntrue) < 1e-12
  assert micro['support'] == ntrue


def test_format_table():
  r = prf.class_report([0, 1, 2], [0, 2, 2], ['O', 'PER', 'LOC'], exclude=('O',))
  table = prf.format_table(r, title='tokens')
  lines = table.splitlines()
  assert lines[0] == 'tokens'
  for name in ('O', 'PER', 'LOC', 'micro', 'macro', 'accuracy'):
    assert any(line.split()[0] == name for line in lines[2:])
  micro = next(line for line in lines if line.startswith('micro')).split()
  assert micro[1:] == ['0.5000', '0.5000', '0.5000', '2']
  assert len({len(line) for line in lines[1:]}) == 1
