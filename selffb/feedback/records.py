"""Recorded feedback: the JSONL schema, line-by-line validation, and the conversion of records
into weighted training rows and preference pairs. Pure Python: no arrays, no model.

One record a line, a JSON object with a non-empty `prompt` and either
  - `response` with at least one of `rating` (a number on the configured scale), `label` (one of
    the configured labels) or `correction` (a better response); or
  - `chosen` and `rejected`, two different responses to the prompt (a preference pair).
`id` and `source` (string or number) are optional and kept in the reports. Any other field is an
error, so a misspelt `raiting` is reported rather than silently ignored.

A row is one response to train on or score: `{'prompt', 'response', 'signal', 'weight', 'kto',
'category', 'line', 'id', 'source'}`. `signal` in [0, 1] is the record's feedback (the `rating`
source of F); `weight` scales the row's supervised loss (0: the row only enters a preference
term or the report); `kto` is +1 / -1 for a desirable / undesirable row of the KTO-style arm.
Rows come in groups (`convert`): one row, a correction with the response it replaced, or a
preference pair (chosen, rejected).

Conversion (config.data.feedback): a rating r on the scale (lo, hi) gives signal (r - lo) /
(hi - lo) and a label its configured signal, with weight 1 (under label_loss='kto' a label's
row has weight 0 and kto +1 above signal 0.5, -1 below); a correction gives a row (prompt,
correction) with signal 1 and weight correction_weight, and the replaced response keeps its
own signal (0 without one) with weight 1, original_weight or 0 (corrected_original keep,
downweight, drop); a pair's chosen row has signal 1 and weight pair_sft_weight, its rejected
row signal 0 and weight 0.
"""
import dataclasses
import json
import math

from selffb import errors as errors_lib

FIELDS = ('prompt', 'response', 'rating', 'label', 'correction', 'chosen', 'rejected', 'id',
          'source')
ERRORS = ('strict', 'skip')
LABEL_LOSSES = ('weighted', 'kto')
ORIGINAL_RULES = ('drop', 'keep', 'downweight')


class RecordError(ValueError):
  """One record's problem (the reason, without its line number)."""


class RecordFileError(errors_lib.InputError):
  """A feedback file that cannot be used; the message lists its problems by line."""


@dataclasses.dataclass(frozen=True)
class Rules:
  """`config.data.feedback`'s schema and conversion settings, validated."""
  rating_scale: tuple = (1.0, 5.0)  # (worst, best) rating; mapped linearly onto [0, 1].
  labels: tuple = (('good', 1.0), ('bad', 0.0))  # (label, signal) pairs.
  label_loss: str = 'weighted'  # 'weighted' (signal weights the loss) or 'kto'.
  correction_weight: float = 1.0  # Loss weight of a (prompt, correction) row.
  corrected_original: str = 'downweight'  # The response a correction replaced.
  original_weight: float = 0.2  # Its weight under 'downweight'.
  correction_pairs: bool = False  # Also train (correction > response) as a preference pair.
  pair_sft_weight: float = 0.0  # Supervised loss weight of a pair's chosen response.

  def __post_init__(self):
    lo, hi = self.rating_scale
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
      raise ValueError(f'config.data.feedback.rating_scale={self.rating_scale} must be two '
                       'finite numbers, worst < best (e.g. (1, 5)).')
    if not self.labels:
      raise ValueError('config.data.feedback.labels is empty; give e.g. "good=1,bad=0".')
    for name, value in self.labels:
      if not 0 <= value <= 1:  # NaN too.
        raise ValueError(f'config.data.feedback.labels: {name}={value} must be in [0, 1].')
    for key, value, choices in (('label_loss', self.label_loss, LABEL_LOSSES),
                                ('corrected_original', self.corrected_original, ORIGINAL_RULES)):
      if value not in choices:
        raise ValueError(f'config.data.feedback.{key}={value!r}; choose one of {choices}.')
    for key in ('correction_weight', 'original_weight', 'pair_sft_weight'):
      if not 0 <= getattr(self, key) < math.inf:
        raise ValueError(f'config.data.feedback.{key}={getattr(self, key)} must be >= 0.')

  @classmethod
  def from_config(cls, c):
    return cls(rating_scale=tuple(float(x) for x in c.rating_scale),
               labels=parse_labels(c.labels), label_loss=c.label_loss,
               correction_weight=float(c.correction_weight),
               corrected_original=c.corrected_original, original_weight=float(c.original_weight),
               correction_pairs=bool(c.correction_pairs),
               pair_sft_weight=float(c.pair_sft_weight))


def parse_labels(text):
  """'good=1,bad=0' -> (('good', 1.0), ('bad', 0.0))."""
  out = []
  for item in [x.strip() for x in text.split(',') if x.strip()]:
    name, sep, value = item.partition('=')
    try:
      if not sep or not name.strip():
        raise ValueError
      out.append((name.strip(), float(value)))
    except ValueError:
      raise ValueError(f'config.data.feedback.labels={text!r}: {item!r} is not label=value '
                       '(e.g. "good=1,bad=0").') from None
  names = [name for name, _ in out]
  if len(set(names)) < len(names):
    raise ValueError(f'config.data.feedback.labels={text!r} names a label twice.')
  return tuple(out)


def _text(record, key, required=True):
  value = record.get(key)
  if value is None:
    if required:
      raise RecordError(f'missing field {key!r}')
    return None
  if not isinstance(value, str):
    raise RecordError(f'{key!r} must be a string, got {type(value).__name__}')
  if not value.strip():
    raise RecordError(f'{key!r} is empty')
  try:
    value.encode('utf-8')
  except UnicodeEncodeError:
    raise RecordError(f'{key!r} holds a lone surrogate escape (\\ud800-\\udfff), not '
                      'text') from None
  return value


def parse(line, rules):
  """One JSONL line -> the record, checked against the schema; raises RecordError."""
  try:
    record = json.loads(line)
  except ValueError as e:
    raise RecordError(f'not valid JSON ({e.msg} at column {e.colno})') from None
  if not isinstance(record, dict):
    raise RecordError(f'a record is a JSON object, got {type(record).__name__}')
  unknown = sorted(set(record) - set(FIELDS))
  if unknown:
    raise RecordError(f'unknown field(s) {unknown}; the fields are {FIELDS}')
  _text(record, 'prompt')
  for key in ('id', 'source'):
    if key in record and (isinstance(record[key], bool)
                          or not isinstance(record[key], (str, int, float))
                          or (isinstance(record[key], float) and not math.isfinite(record[key]))):
      raise RecordError(f'{key!r} must be a string or a finite number')
  if 'chosen' in record or 'rejected' in record:
    _pair(record)
  else:
    _response(record, rules)
  return record


def _pair(record):
  extra = [k for k in ('response', 'rating', 'label', 'correction') if k in record]
  if extra:
    raise RecordError(f'a preference pair has chosen and rejected only, not {extra}')
  chosen, rejected = _text(record, 'chosen'), _text(record, 'rejected')
  if chosen == rejected:
    raise RecordError('chosen and rejected are identical')


def _response(record, rules):
  response = _text(record, 'response')
  if not any(k in record for k in ('rating', 'label', 'correction')):
    raise RecordError('no feedback: give rating, label or correction (or chosen and rejected '
                      'instead of response)')
  if 'rating' in record and 'label' in record:
    raise RecordError('both rating and label: give one')
  if 'rating' in record:
    rating, (lo, hi) = record['rating'], rules.rating_scale
    if isinstance(rating, bool) or not isinstance(rating, (int, float)):
      raise RecordError(f'rating must be a number, got {rating!r}')
    if not lo <= rating <= hi:  # NaN fails too.
      raise RecordError(f'rating {rating} is outside the scale [{lo:g}, {hi:g}] '
                        '(config.data.feedback.rating_scale)')
  if 'label' in record:
    names = [name for name, _ in rules.labels]
    if record['label'] not in names:
      raise RecordError(f'unknown label {record["label"]!r}; config.data.feedback.labels has '
                        f'{names}')
  if 'correction' in record and _text(record, 'correction') == response:
    raise RecordError('correction is identical to response')


def read(path, rules, errors='strict', accept=None):
  """Reads a JSONL file a line at a time, calling `accept(line number, record)` on each valid
  record (it may return a reason to reject it, e.g. too long for the model); records are not
  kept here. Returns (accepted count, problems [(line, reason)]). errors='strict' raises
  RecordFileError listing every problem; 'skip' returns them (raising if no line is usable)."""
  if errors not in ERRORS:
    raise ValueError(f'config.data.feedback.errors={errors!r}; choose one of {ERRORS}.')
  count, problems = 0, []
  with open(path, 'rb') as f:
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode('utf-8')
      except UnicodeDecodeError as e:
        problems.append((n, f'not UTF-8 ({e.reason} at byte {e.start})'))
        continue
      if not line.strip():
        continue
      try:
        record = parse(line, rules)
      except RecordError as e:
        problems.append((n, str(e)))
        continue
      reason = accept(n, record) if accept else None
      if reason:
        problems.append((n, reason))
      else:
        count += 1
  if not count and not problems:
    raise RecordFileError(f'{path} holds no feedback records; write one JSON object a line '
                          '(selffb/feedback/records.py documents the fields).')
  if problems and (errors == 'strict' or not count):
    why = 'and no line is usable' if not count else "(config.data.feedback.errors='strict')"
    raise RecordFileError(f'{path}: {len(problems)} malformed line(s) {why}:\n' +
                          describe(problems) + "\nFix them, or set config.data.feedback.errors="
                          "'skip' to train on the other lines.")
  return count, problems


def describe(problems, limit=50):
  """Problems as lines 'line N: reason', at most `limit`, then how many more."""
  lines = [f'  line {n}: {why}' for n, why in problems[:limit]]
  if len(problems) > limit:
    lines.append(f'  ... and {len(problems) - limit} more')
  return '\n'.join(lines)


def signal(record, rules):
  """A response record's rating or label as a signal in [0, 1] (None without either)."""
  if 'rating' in record:
    lo, hi = rules.rating_scale
    return (float(record['rating']) - lo) / (hi - lo)
  if 'label' in record:
    return dict(rules.labels)[record['label']]
  return None


def category(value):
  """The report's group of a rated or labelled row: high above the scale's middle, low below."""
  return 'high' if value > 0.5 else 'low' if value < 0.5 else 'middle'


def convert(line, record, rules):
  """One record -> its groups [(rows, is_pair)] by the rules (module docstring): a rated or
  labelled response is a group of one row; a correction and the response it replaced are a
  group of two (so the report compares them); a preference pair is a pair group."""
  meta = {'line': line, 'id': record.get('id'), 'source': record.get('source')}
  row = lambda response, value, weight, kind, kto=0: {
      'prompt': record['prompt'], 'response': response, 'signal': value, 'weight': weight,
      'kto': kto, 'category': kind, **meta}
  if 'chosen' in record:
    return [((row(record['chosen'], 1.0, rules.pair_sft_weight, 'chosen'),
              row(record['rejected'], 0.0, 0.0, 'rejected')), True)]
  value, response = signal(record, rules), record['response']
  if 'correction' not in record:
    kind = ('rated_' if 'rating' in record else 'labelled_') + category(value)
    if 'label' in record and rules.label_loss == 'kto' and value != 0.5:
      return [((row(response, value, 0.0, kind, 1 if value > 0.5 else -1),), False)]
    return [((row(response, value, 1.0, kind),), False)]
  original = 0.0 if value is None else value  # What people wanted was the correction.
  weight = {'keep': 1.0, 'downweight': rules.original_weight, 'drop': 0.0}[
      rules.corrected_original]  # 'drop': not trained on, still scored in the report.
  groups = [((row(record['correction'], 1.0, rules.correction_weight, 'correction'),
              row(response, original, weight, 'replaced')), False)]
  if rules.correction_pairs:
    groups.append(((row(record['correction'], 1.0, 0.0, 'chosen'),
                    row(response, original, 0.0, 'rejected')), True))
  return groups
