"""Iterative self-training: train, sample, score, keep the good samples, retrain, repeat.

Round 0 trains on the task's training set (or takes a train run's parameters). Round r draws new
problems one digit harder than round r-1, samples k candidates for each with the KV-cache
sampler, scores every candidate with Q = sum_i w_i f_i over the sources in `config.selftrain.
weights`, keeps each prompt's best candidate when Q >= theta (then, optionally, only the top
share), and trains from the current weights on the training set mixed with everything kept so
far. Rounds stop at a target, a round cap, or when validation stops improving. A control run
repeats the same rounds without the self-labelled data.

Each round is a directory under <workdir>/rounds: `kept.jsonl` (every kept sample with its
score, sources and whether it is correct), `selection.json`, the round's training checkpoints
and `report.json` (its row). A rerun skips finished rounds and resumes an unfinished one where
it stopped. The report (`rounds.csv`, `rounds.md`, `accuracy.png`) is rewritten after each round.
"""
import csv
import dataclasses
import importlib
import json
import math
import os
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from selffb import data
from selffb import modes
from selffb import optim
from selffb import sampling
from selffb import train
from selffb import validate
from selffb import lock

SOURCES = ('confidence_mean', 'confidence_min', 'vote', 'format', 'verifier', 'rating')


# ---- Scoring and selection: pure functions of candidate lists. ----

def normalize_weights(weights):
  """{source: w} -> the non-zero weights scaled to sum to 1; names and signs checked."""
  unknown = sorted(set(weights) - set(SOURCES))
  if unknown:
    raise ValueError(f'config.selftrain.weights: unknown source(s) {unknown}; known: {SOURCES}.')
  if any(w < 0 for w in weights.values()):
    raise ValueError(f'config.selftrain.weights={weights} must be >= 0.')
  total = sum(weights.values())
  if total <= 0:
    raise ValueError('config.selftrain.weights are all 0; give at least one source a weight.')
  return {k: w / total for k, w in weights.items() if w}


def vote_shares(answers):
  """For each of a prompt's k candidate answers, the share of the k that give the same answer."""
  counts = {}
  for a in answers:
    counts[a] = counts.get(a, 0) + 1
  return [counts[a] / len(answers) for a in answers]


def fuse(scores, weights):
  """Q = sum_i w_i f_i over the normalised weights; `scores` maps every weighted source."""
  return sum(w * scores[k] for k, w in weights.items())


def select(groups, theta, top_fraction=1.0):
  """Per prompt (a list of candidates, each a dict with 'q'), the candidate with the highest Q
  (the first on a tie) if Q >= theta; then, if top_fraction < 1, only the top share of those
  prompts by Q (ceil, ties kept in prompt order). Returns the kept candidates in prompt order."""
  best = [max(g, key=lambda c: c['q']) for g in groups if g]
  best = [c for c in best if c['q'] >= theta]
  if top_fraction < 1:
    n = math.ceil(top_fraction * len(best))
    order = sorted(range(len(best)), key=lambda i: -best[i]['q'])[:n]
    best = [best[i] for i in sorted(order)]
  return best


def label_precision(kept):
  """The share of kept samples that are correct (None when nothing was kept)."""
  return sum(c['correct'] for c in kept) / len(kept) if kept else None


# ---- Verifiers and ratings. ----

def resolve_verifier(name, layout):
  """'addition' (exact check of the built-in task), '' (none), or 'module:function' taking
  (prompt, answer) strings and returning a bool."""
  if name == 'addition':
    aligned = layout.positions == 'aligned'
    return lambda prompt, answer: answer == data.addition_answer(prompt, aligned)
  if not name:
    return None
  module, _, fn = name.partition(':')
  try:
    return getattr(importlib.import_module(module), fn)
  except (ImportError, AttributeError, ValueError) as e:
    raise ValueError(f"config.selftrain.verifier={name!r} cannot be loaded ({e}); use 'addition' "
                     "or 'package.module:function'.") from None


def load_ratings(path):
  """{(prompt, answer): rating} from a JSON-lines file; a bad line is an error naming it."""
  if not path:
    return {}
  ratings = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
        rating = float(r['rating'])
        if not (isinstance(r['prompt'], str) and isinstance(r['answer'], str)
                and 0 <= rating <= 1):
          raise ValueError('prompt and answer must be strings and rating in [0, 1]')
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{path} line {n}: {e!r}; each line must be {{"prompt": str, '
                         '"answer": str, "rating": number in [0, 1]}.') from None
      ratings[(r['prompt'], r['answer'])] = rating
  return ratings


# ---- Data. ----

class ListSource:
  """Records in memory with the random-access interface of a tfds data source."""

  def __init__(self, records):
    self.records = list(records)

  def __len__(self):
    return len(self.records)

  def __getitems__(self, indices):
    return [self.records[i] for i in indices]


class MixedSource:
  """The training set followed by the self-labelled records repeated `repeats` times."""

  def __init__(self, base, extra, repeats):
    self.base, self.extra, self.repeats = base, extra, repeats

  def __len__(self):
    return len(self.base) + len(self.extra) * self.repeats

  def __getitems__(self, indices):
    n = len(self.base)
    own = self.base.__getitems__([i for i in indices if i < n]) if n else []
    out, k = [], 0
    for i in indices:
      if i < n:
        out.append(own[k])
        k += 1
      else:
        out.append(self.extra.records[(i - n) % len(self.extra)])
    return out


def mix(base, self_records, share, cap):
  """A source where about `share` of the examples are self-labelled (the newest `cap`)."""
  if cap:
    self_records = self_records[-cap:]
  if not self_records or share <= 0:
    return base
  repeats = max(1, round(share / (1 - share) * len(base) / len(self_records)))
  return MixedSource(base, ListSource(self_records), repeats)


def to_record(prompt, answer, digits):
  return {'prompt': prompt.encode(), 'answer': answer.encode(), 'digits': digits}


def draw_problems(rng, digits, count, exclude):
  """`count` distinct (a, b) with the longer operand `digits` long, none in `exclude`."""
  low = lambda d: 0 if d == 1 else 10 ** (d - 1)
  capacity = (10 ** digits - low(digits)) * 10 ** digits
  if count > capacity // 2:
    raise ValueError(f'{count} problems of {digits} digits requested; lower '
                     'config.selftrain.prompts_per_round.')
  pairs = set()
  while len(pairs) < count:
    other = int(rng.integers(1, digits + 1))
    a, b = data.random_operand(rng, digits), data.random_operand(rng, other)
    pair = (a, b) if rng.random() < 0.5 else (b, a)
    if pair not in exclude:
      pairs.add(pair)
  return sorted(pairs)


def _write_json(path, obj):
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _write_jsonl(path, rows):
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      for row in rows:
        f.write(json.dumps(row) + '\n')
    os.replace(tmp, path)


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# ---- The rounds. ----

@dataclasses.dataclass
class _Run:
  """What every round of a run shares."""
  s: train.Setup
  workdir: str
  signals: train.StopSignals
  val: dict  # {digits: ListSource}
  tests: dict  # {digits: source}
  weights: dict
  verifier: object
  ratings: dict


def _evaluate(run, params):
  """Greedy exact match per length on validation and test sets."""
  s = run.s
  bs = s.config.data.eval_batch_size
  sources = {**{f'val_{n}': v for n, v in run.val.items()},
             **{f'test_{n}': t for n, t in run.tests.items()}}
  got = train.greedy_exact_match(params, sources, s.tokenizer, s.model_cfg, bs, s.mesh, s.layout)
  val = {n: got[f'val_{n}'] for n in run.val}
  return {'val_exact': float(np.mean(list(val.values()))),
          'val': {str(n): v for n, v in val.items()},
          'test': {str(n): got[f'test_{n}'] for n in run.tests}}


def _sample_round(run, params, r, digits):
  """Draws, samples, scores and selects round r's self-labelled data; returns its summary."""
  s, st = run.s, run.s.config.selftrain
  tok, layout = s.tokenizer, s.layout
  exclude = {p for src in list(run.val.values()) + list(run.tests.values())
             for p in _pairs(src)}
  problems = draw_problems(np.random.default_rng([s.config.seed, r]), digits,
                           st.prompts_per_round, exclude)
  aligned = layout.positions == 'aligned'
  texts = [data.addition_example(a, b, aligned)['prompt'] for a, b in problems]
  k = st.samples_per_prompt
  prompts = [tok.encode_prompt(t) for t in texts]
  answer_len = digits + 1  # Aligned answers have n + 1 digits; plain at most that, plus eos.
  sp = sampling.SamplingParams(temperature=float(st.temperature), top_k=int(st.top_k),
                               max_new_tokens=answer_len + layout.eos)
  prompt_len = sampling.bucket(max(len(p) for p in prompts))
  bs = s.config.data.eval_batch_size
  flat = [p for p in prompts for _ in range(k)]
  outs = []
  for start in range(0, len(flat), bs):
    chunk = flat[start:start + bs]
    chunk = chunk + [chunk[0]] * (bs - len(chunk))
    got = sampling.generate(params, chunk, cfg=s.model_cfg, sp=sp, eos_id=tok.eos_id,
                            pad_id=tok.pad_id, seed=hash_seed(s.config.seed, r, start),
                            mesh=s.mesh, prompt_len=prompt_len,
                            positions=[layout.position_ids(p, tok) for p in chunk])
    outs.extend(got[:len(flat) - start])
  groups = []
  for i, text in enumerate(texts):
    cands = [_candidate(tokens, logprobs, digits, layout, tok)
             for tokens, logprobs in outs[i * k:(i + 1) * k]]
    for c, share in zip(cands, vote_shares([c['answer'] for c in cands])):
      c['vote'] = share
      c['verifier'] = float(bool(run.verifier(text, c['answer']))) if run.verifier else 0.0
      c['rating'] = run.ratings.get((text, c['answer']), 0.0)
      c['q'] = fuse(c, run.weights)
      c['correct'] = c['answer'] == data.addition_answer(text, aligned)
      c['prompt'] = text
    groups.append(cands)
  kept = select(groups, st.theta, st.keep_top_fraction)
  every = [c for g in groups for c in g]
  summary = {'digits': digits, 'prompts': len(texts), 'generated': len(every),
             'kept': len(kept), 'label_precision': label_precision(kept),
             'candidate_accuracy': sum(c['correct'] for c in every) / len(every)}
  rows = [{'prompt': c['prompt'], 'answer': c['answer'], 'digits': digits, 'q': c['q'],
           'correct': c['correct'], 'scores': {k: c[k] for k in SOURCES}} for c in kept]
  return summary, rows


def _candidate(tokens, logprobs, digits, layout, tok):
  """A sampled continuation -> its answer text and the sources read off the sample itself."""
  answer_len = digits + 1
  if not layout.eos:  # Fixed-length answers: the model stops by length.
    tokens, logprobs = tokens[:answer_len], logprobs[:answer_len]
  answer = tok.decode(tokens)
  probs = np.exp(logprobs)
  if layout.eos:  # Ended with eos; n or n + 1 digits, no leading (reversed: trailing) zero.
    ended = len(tokens) > 0 and tokens[-1] == tok.eos_id
    right_form = ended and len(answer) in (digits, answer_len) and (
        answer == '0' or answer[-1] != '0')
  else:
    right_form = len(answer) == answer_len
  return {'answer': answer, 'confidence_mean': float(probs.mean()),
          'confidence_min': float(probs.min()),
          'format': float(bool(right_form) and answer.isdigit() and answer.isascii())}


def hash_seed(*parts):
  return int(np.random.default_rng(list(parts)).integers(0, 2 ** 31 - 1))


def _pairs(source):
  """(a, b) of every addition record of a source."""
  out = []
  for rec in data.read_all(source):
    a, b = rec['prompt'].decode()[:-1].split('+')
    out.append((int(a[::-1]), int(b[::-1])))
  return out


def _round_config(config, r, steps):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.seed = config.seed + r
    c.train.num_steps = steps
    c.train.eval_every = steps  # One evaluation, at the end: a round ends on its last weights.
    c.train.patience = 0
    c.train.checkpoint_every = min(config.train.checkpoint_every, steps)
    c.optim.lr = config.selftrain.lr
    c.optim.warmup_steps = min(config.selftrain.warmup_steps, steps - 1)
  return c


def _train_round(run, directory, config, self_records, init_params):
  """Trains one round in `directory` (resuming it); returns (summary, params)."""
  s = run.s
  source = mix(s.splits['train'], [to_record(r['prompt'], r['answer'], r['digits'])
                                   for r in self_records],
               config.selftrain.mix, config.selftrain.max_self_examples)
  seq_len = max(s.seq_len, max((data.example_length(to_record(r['prompt'], r['answer'], 0))
                                for r in self_records), default=0))
  if seq_len > config.model.max_len:
    raise validate.ConfigError(f'round data needs {seq_len} tokens but config.model.max_len='
                               f'{config.model.max_len}; raise it.')
  rs = dataclasses.replace(s, config=config, splits={**s.splits, 'train': source},
                           seq_len=seq_len,
                           tx=optim.make_optimizer(config.optim, config.train.num_steps))
  return train.train_loop(rs, directory, run.signals, init_params=init_params,
                          final_report=False, keep_best=False)


def _restore_params(run, directory):
  _, params, _ = modes.restore_best_params(run.s.config, directory, run.s.model_cfg, run.s.mesh)
  return params


def run_selftrain(config, workdir):
  """--mode=selftrain: the rounds in workdir (resuming), then the report; returns its rows."""
  s = train.setup(config, workdir)  # Validates the whole config first.
  st = config.selftrain
  if config.data.task != 'addition':
    raise validate.ConfigError("--mode=selftrain draws its problems from the built-in task: "
                               "set config.data.task='addition'.")
  weights = normalize_weights(st.weights.to_dict())
  verifier = resolve_verifier(st.verifier, s.layout)
  if weights.get('verifier') and verifier is None:
    raise validate.ConfigError('config.selftrain.weights.verifier > 0 but config.selftrain.'
                               'verifier is empty; name one.')
  ratings = load_ratings(st.ratings_file)
  tests = {int(k[len('test_'):]): v for k, v in s.splits.items() if k.startswith('test_')}
  held = {p for t in tests.values() for p in _pairs(t)}
  aligned = s.layout.positions == 'aligned'
  val = {}
  for n in sorted(tests):
    rng = np.random.default_rng([config.seed, 7919, n])
    per_operand = 10 if n == 1 else 9 * 10 ** (n - 1)
    count = min(st.val_per_length, (per_operand ** 2 - len(_pairs(tests[n]))) // 2)
    pairs = data.distinct_pairs(rng, count, lambda n=n: (n, n), held)
    held.update(pairs)
    val[n] = ListSource([to_record(**data.addition_example(a, b, aligned), digits=n)
                         for a, b in pairs])
  handle = lock.acquire(workdir) if jax.process_index() == 0 else None
  try:
    with train.StopSignals() as signals:
      run = _Run(s=s, workdir=workdir, signals=signals, val=val, tests=tests, weights=weights,
                 verifier=verifier, ratings=ratings)
      return _rounds(run)
  finally:
    if handle is not None:
      lock.release(handle)


def _rounds(run):
  s, st, workdir = run.s, run.s.config.selftrain, run.workdir
  root = os.path.join(workdir, 'rounds')
  os.makedirs(root, exist_ok=True)
  rows = []

  def finish(directory, row, params):
    _write_json(os.path.join(directory, 'report.json'), row)
    rows.append(row)
    write_report(workdir, rows)
    logging.info('%s round %d done: %s', row['run'], row['round'], _brief(row))
    return params

  def done(directory):
    path = os.path.join(directory, 'report.json')
    if os.path.exists(path):
      with open(path) as f:
        rows.append(json.load(f))
      return True
    return False

  # Round 0: base training (or a given run's parameters).
  r0 = os.path.join(root, 'r00')
  # Where round 0's parameters live: r00's checkpoints, or the run it was taken from.
  base_dir = modes.checkpoint_dir(st.init_workdir) if st.init_workdir else r0
  params = None
  if not done(r0):
    t0 = time.time()
    if st.init_workdir:
      params = _restore_params(run, base_dir)
      steps = 0
    else:
      summary, params = train.train_loop(s, r0, run.signals, final_report=False)
      if 'stopped_by' in summary:
        return None
      steps = summary['steps']
    row = {'run': 'self', 'round': 0, 'digits': _train_range(s.config), 'steps': steps,
           **_evaluate(run, params), 'wall_s': time.time() - t0}
    params = finish(r0, row, params)
  base_params = params
  start = st.start_digits or s.config.data.addition.max_digits + 1
  best_val, bad, last = rows[0]['val_exact'], 0, 0
  kept_all = []
  for r in range(1, st.rounds + 1):
    if jax.process_count() > 1:  # Every host decides what is done from the same files.
      multihost_utils.sync_global_devices(f'selftrain round {r}')
    directory = os.path.join(root, f'r{r:02d}')
    digits = start + r - 1
    kept_path = os.path.join(directory, 'kept.jsonl')
    if done(directory):
      kept_all += _read_jsonl(kept_path)
      params = None
    else:
      if params is None:
        params = _restore_params(run, os.path.join(root, f'r{r - 1:02d}') if r > 1 else base_dir)
      os.makedirs(directory, exist_ok=True)
      t0 = time.time()
      if os.path.exists(kept_path):
        with open(os.path.join(directory, 'selection.json')) as f:
          selection = json.load(f)
        kept = _read_jsonl(kept_path)
      else:
        if run.signals.received:  # Stopped during the last evaluation: stop before sampling.
          return None
        selection, kept = _sample_round(run, params, r, digits)
        # selection.json first: kept.jsonl marks the pair complete.
        _write_json(os.path.join(directory, 'selection.json'), selection)
        _write_jsonl(kept_path, kept)
        logging.info('round %d: %d-digit prompts %d, candidates %d, kept %d, label precision '
                     '%s', r, digits, selection['prompts'], selection['generated'],
                     selection['kept'], _pct(selection['label_precision']))
        if not kept:
          logging.warning('round %d kept nothing (theta=%s): it trains on the original data '
                          'and earlier rounds\' samples only.', r, st.theta)
      kept_all += kept
      config = _round_config(s.config, r, st.steps_per_round)
      summary, params = _train_round(run, directory, config, kept_all, params)
      if 'stopped_by' in summary:
        return None
      row = {'run': 'self', 'round': r, **selection, 'steps': summary['steps'],
             **_evaluate(run, params), 'wall_s': time.time() - t0}
      params = finish(directory, row, params)
    last = r
    row = rows[-1]
    if row['val_exact'] > best_val:
      best_val, bad = row['val_exact'], 0
    else:
      bad += 1
    if st.target_digits and row['val'].get(str(st.target_digits), 0) >= st.target_accuracy:
      logging.info('target reached: validation exact match at %d digits >= %s',
                   st.target_digits, st.target_accuracy)
      break
    if st.patience and bad >= st.patience:
      logging.info('stopping: no better validation exact match in %d rounds', st.patience)
      break

  if st.control:  # The same rounds and steps, without the self-labelled data.
    params = base_params
    for r in range(1, last + 1):
      directory = os.path.join(workdir, 'control', f'r{r:02d}')
      if done(directory):
        params = None
        continue
      if params is None:
        prev = os.path.join(workdir, 'control', f'r{r - 1:02d}') if r > 1 else base_dir
        params = _restore_params(run, prev)
      t0 = time.time()
      config = _round_config(s.config, r, st.steps_per_round)
      summary, params = _train_round(run, directory, config, [], params)
      if 'stopped_by' in summary:
        return None
      row = {'run': 'control', 'round': r, 'digits': _train_range(s.config),
             'steps': summary['steps'], **_evaluate(run, params), 'wall_s': time.time() - t0}
      params = finish(directory, row, params)
  write_report(workdir, rows)
  logging.info('self-training report: %s\n%s', os.path.join(workdir, 'rounds.md'),
               markdown(rows))
  return rows


def _train_range(config):
  a = config.data.addition
  return f'{a.min_digits}-{a.max_digits}'


def _pct(x):
  return '-' if x is None else f'{100 * x:.1f}%'


def _brief(row):
  test = ' '.join(f'{k}:{100 * v:.0f}' for k, v in row['test'].items())
  return f"val exact {_pct(row['val_exact'])}; test exact % by digits {test}"


# ---- The report. ----

def _columns(rows):
  lengths = sorted({int(k) for row in rows for k in row['test']})
  return ['run', 'round', 'digits', 'prompts', 'generated', 'kept', 'label_precision',
          'candidate_accuracy', 'before', 'after', 'steps', 'val_exact'] + [
              f'acc_{n}' for n in lengths] + ['wall_s']


def _flat_rows(rows):
  """Rows with acc_<n> columns, and test accuracy at the round's digits before and after it
  (before: the previous round of the same run, round 0 for the first)."""
  out, last = [], {}
  for row in rows:
    flat = dict(row)
    flat.update({f'acc_{k}': v for k, v in row['test'].items()})
    prev = last.get(row['run'], last.get('self'))
    d = str(row['digits'])
    if prev is not None and d in row['test']:
      flat['before'], flat['after'] = prev['test'][d], row['test'][d]
    last[row['run']] = row
    out.append(flat)
  return out


def markdown(rows):
  """The report as a markdown table; test exact match in %, one column per length."""
  cols = _columns(rows)
  head = [c.replace('acc_', '') + ('d' if c.startswith('acc_') else '') for c in cols]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(cols)]
  for flat in _flat_rows(rows):
    cells = []
    for c in cols:
      v = flat.get(c, '')
      if c.startswith('acc_') or c in ('label_precision', 'candidate_accuracy', 'val_exact',
                                       'before', 'after'):
        v = _pct(v) if v != '' else ''
      elif c == 'wall_s':
        v = f'{v:.0f}'
      cells.append(str(v))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write_report(workdir, rows):
  """rounds.csv, rounds.md and accuracy.png (test exact match against digits, a line a round)."""
  if jax.process_index() != 0 or not rows:
    return
  cols = _columns(rows)
  with open(os.path.join(workdir, 'rounds.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, cols, extrasaction='ignore')
    writer.writeheader()
    for flat in _flat_rows(rows):
      writer.writerow(flat)
  with open(os.path.join(workdir, 'rounds.md'), 'w') as f:
    f.write('Greedy exact match (%) on held-out test problems per operand length (1d, 2d, ...) '
            'after each round; before/after: at the digits the round prompted. label_precision: '
            'share of kept samples that are correct (exact check, whatever the filter). '
            'candidate_accuracy: share of all sampled candidates that are correct.\n\n')
    f.write(markdown(rows) + '\n')
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  low, high = (int(x) for x in str(rows[0]['digits']).split('-'))
  ax.axvspan(low - 0.5, high + 0.5, color='0.9', label='training lengths')
  for row in rows:
    xs = [int(k) for k in row['test']]
    control = row['run'] == 'control'
    if control and row['round'] != max(r['round'] for r in rows if r['run'] == 'control'):
      continue
    ax.plot(xs, [100 * v for v in row['test'].values()], 'k--' if control else '-o',
            label=f"control after {row['round']} rounds" if control else f"round {row['round']}")
  ax.set_xlabel('operand digits')
  ax.set_ylabel('greedy exact match (%)')
  ax.set_ylim(-2, 102)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'accuracy.png'), dpi=100)
  plt.close(fig)
