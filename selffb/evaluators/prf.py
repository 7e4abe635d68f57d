"""Precision, recall and F1 reports on the host: per class of token labels, per entity type of
BIO tag sequences (CoNLL conlleval semantics, via seqeval), and a text table of either."""
import numpy as np


def _prf(tp, fp, fn):
  """precision, recall, f1 of counts, each 0.0 where its denominator is 0."""
  p = tp / (tp + fp) if tp + fp else 0.0
  r = tp / (tp + fn) if tp + fn else 0.0
  return float(p), float(r), float(2 * p * r / (p + r)) if p + r else 0.0


def class_report(y_true, y_pred, labels, exclude=()):
  """Per-class, micro and macro P/R/F1 and accuracy of 1-D int class ids (id -> labels[id]).

  micro and macro are over the labels not in `exclude`: a prediction of an excluded class counts
  as no prediction, a true item of one is not a miss.
  """
  y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
  if y_true.shape != y_pred.shape:
    raise ValueError(f'y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape.')
  n = len(labels)
  tp = np.bincount(y_true[y_true == y_pred], minlength=n)[:n]
  true = np.bincount(y_true, minlength=n)[:n]
  pred = np.bincount(y_pred, minlength=n)[:n]
  classes = {}
  for i, name in enumerate(labels):
    p, r, f = _prf(int(tp[i]), int(pred[i] - tp[i]), int(true[i] - tp[i]))
    classes[name] = {'precision': p, 'recall': r, 'f1': f, 'support': int(true[i])}
  keep = np.array([name not in exclude for name in labels], bool)
  ktp, kpred, ktrue = int(tp[keep].sum()), int(pred[keep].sum()), int(true[keep].sum())
  p, r, f = _prf(ktp, kpred - ktp, ktrue - ktp)
  micro = {'precision': p, 'recall': r, 'f1': f, 'support': ktrue}
  kept = [classes[name] for name in labels if name not in exclude]
  macro = {k: float(np.mean([c[k] for c in kept])) if kept else 0.0
           for k in ('precision', 'recall', 'f1')}
  macro['support'] = ktrue
  return {'classes': classes, 'micro': micro, 'macro': macro,
          'accuracy': float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
          'count': int(len(y_true))}


def entity_report(true_tags, pred_tags):
  """Per-type, micro and macro P/R/F1 of entities in BIO tag sequences (lists of lists of tags);
  an entity counts only when its type and both boundaries match (seqeval's default mode)."""
  from seqeval import metrics  # pylint: disable=g-import-not-at-top; slow to import.
  true_tags, pred_tags = [list(t) for t in true_tags], [list(t) for t in pred_tags]
  raw = metrics.classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)

  def plain(m):
    return {'precision': float(m['precision']), 'recall': float(m['recall']),
            'f1': float(m['f1-score']), 'support': int(m['support'])}

  avgs = ('micro avg', 'macro avg', 'weighted avg')
  return {'classes': {k: plain(m) for k, m in raw.items() if k not in avgs},
          'micro': plain(raw['micro avg']), 'macro': plain(raw['macro avg']),
          'count': len(true_tags)}


def bio_spans(tags):
  """The set of (type, start, end) entities of one tag sequence, end exclusive, as conlleval reads
  IOB1/IOB2: B-X always starts an entity, I-X starts one unless it follows B-X or I-X."""
  spans, start, kind = set(), None, None
  for i, tag in enumerate(list(tags) + ['O']):
    prefix, tag_type = (tag.split('-', 1) + [''])[:2] if tag != 'O' else ('O', None)
    if kind is not None and (prefix != 'I' or tag_type != kind):
      spans.add((kind, start, i))
      kind = None
    if prefix in ('B', 'I') and kind is None:
      start, kind = i, tag_type
  return spans


def format_table(report, title=''):
  """A fixed-width text table of a class_report or entity_report: a row per class, then micro,
  macro and accuracy (in the f1 column) where present."""
  rows = list(report['classes'].items()) + [('micro', report['micro']), ('macro', report['macro'])]
  width = max([len(str(name)) for name, _ in rows] + [8])
  lines = [title] if title else []
  lines.append(f"{'':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>9}")
  for name, m in rows:
    lines.append(f"{str(name):<{width}}  {m['precision']:>9.4f}  {m['recall']:>9.4f}  "
                 f"{m['f1']:>9.4f}  {m['support']:>9d}")
  if 'accuracy' in report:
    lines.append(f"{'accuracy':<{width}}  {'':>9}  {'':>9}  {report['accuracy']:>9.4f}  "
                 f"{report['count']:>9d}")
  return '\n'.join(lines)
