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
import dataclasses
import json
import os
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from selffb import data
from selffb import evaluation
from selffb import modes
from selffb import optim
from selffb import report
from selffb import sampling
from selffb import scoring
from selffb import train
from selffb import validate
from selffb import lock

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
  if count > data.operands_of_length(digits) * 10 ** digits // 2:
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


def _write(path, text):
  """Process 0 writes path atomically (a temporary file renamed over it)."""
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
      f.write(text)
    os.replace(path + '.tmp', path)


def _write_json(path, obj):
  _write(path, json.dumps(obj, indent=2))


def _write_jsonl(path, rows):
  _write(path, ''.join(json.dumps(row) + '\n' for row in rows))


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
  held_out: set  # (a, b) of every test and validation problem: never a round's prompt.
  weights: dict
  verifier: object
  ratings: dict


def _evaluate(run, params):
  """Greedy exact match per length on validation and test sets."""
  s = run.s
  bs = s.config.data.eval_batch_size
  sources = {**{f'val_{n}': v for n, v in run.val.items()},
             **{f'test_{n}': t for n, t in run.tests.items()}}
  got = evaluation.greedy_exact_match(params, sources, s.tokenizer, s.model_cfg, bs, s.mesh,
                                      s.layout)
  val = {n: got[f'val_{n}'] for n in run.val}
  return {'val_exact': float(np.mean(list(val.values()))),
          'val': {str(n): v for n, v in val.items()},
          'test': {str(n): got[f'test_{n}'] for n in run.tests}}


def _sample_round(run, params, r, digits):
  """Draws, samples, scores and selects round r's self-labelled data; returns its summary."""
  s, st = run.s, run.s.config.selftrain
  tok, layout = s.tokenizer, s.layout
  problems = draw_problems(np.random.default_rng([s.config.seed, r]), digits,
                           st.prompts_per_round, run.held_out)
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
  ids = [layout.position_ids(p, tok) for p in prompts for _ in range(k)]
  fill = lambda xs: xs + [xs[0]] * (bs - len(xs))  # One shape: one compile.
  outs = []
  for start in range(0, len(flat), bs):
    got = sampling.generate(params, fill(flat[start:start + bs]), cfg=s.model_cfg, sp=sp,
                            eos_id=tok.eos_id, pad_id=tok.pad_id,
                            seed=hash_seed(s.config.seed, r, start), mesh=s.mesh,
                            prompt_len=prompt_len, positions=fill(ids[start:start + bs]))
    outs.extend(got[:len(flat) - start])
  groups = []
  for i, text in enumerate(texts):
    cands = [scoring.candidate(tokens, logprobs, digits, layout, tok)
             for tokens, logprobs in outs[i * k:(i + 1) * k]]
    for c, share in zip(cands, scoring.vote_shares([c['answer'] for c in cands])):
      c['vote'] = share
      c['verifier'] = float(bool(run.verifier(text, c['answer']))) if run.verifier else 0.0
      c['rating'] = run.ratings.get((text, c['answer']), 0.0)
      c['q'] = scoring.fuse(c, run.weights)
      c['correct'] = c['answer'] == data.addition_answer(text, aligned)
      c['prompt'] = text
    groups.append(cands)
  kept = scoring.select(groups, st.theta, st.keep_top_fraction)
  every = [c for g in groups for c in g]
  summary = {'digits': digits, 'prompts': len(texts), 'generated': len(every),
             'kept': len(kept), 'label_precision': scoring.label_precision(kept),
             'candidate_accuracy': sum(c['correct'] for c in every) / len(every)}
  rows = [{'prompt': c['prompt'], 'answer': c['answer'], 'digits': digits, 'q': c['q'],
           'correct': c['correct'], 'scores': {k: c[k] for k in scoring.SOURCES}} for c in kept]
  return summary, rows


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
  records = [to_record(r['prompt'], r['answer'], r['digits']) for r in self_records]
  source = mix(s.splits['train'], records, config.selftrain.mix,
               config.selftrain.max_self_examples)
  seq_len = max([s.seq_len] + [data.example_length(r) for r in records])
  if seq_len > config.model.max_len:
    raise validate.ConfigError(f'round data needs {seq_len} tokens but config.model.max_len='
                               f'{config.model.max_len}; raise it.')
  rs = dataclasses.replace(s, config=config, splits={**s.splits, 'train': source},
                           seq_len=seq_len,
                           tx=optim.make_optimizer(config.optim, config.train.num_steps))
  return train.train_loop(rs, directory, run.signals, init_params=init_params,
                          final_report=False, keep_best=False)


def _fit_round(run, directory, r, self_records, params, head, t0):
  """Trains round r on the training set plus self_records, then evaluates it; returns
  (row, params), or (None, None) when a signal stopped the training."""
  config = _round_config(run.s.config, r, run.s.config.selftrain.steps_per_round)
  summary, params = _train_round(run, directory, config, self_records, params)
  if 'stopped_by' in summary:
    return None, None
  return {**head, 'steps': summary['steps'], **_evaluate(run, params),
          'wall_s': time.time() - t0}, params


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
  weights = scoring.normalize_weights(st.weights.to_dict())
  verifier = scoring.resolve_verifier(st.verifier, s.layout)
  if weights.get('verifier') and verifier is None:
    raise validate.ConfigError('config.selftrain.weights.verifier > 0 but config.selftrain.'
                               'verifier is empty; name one.')
  ratings = scoring.load_ratings(st.ratings_file)
  tests = {int(k[len('test_'):]): v for k, v in s.splits.items() if k.startswith('test_')}
  test_pairs = {n: _pairs(t) for n, t in tests.items()}
  held = {p for pairs in test_pairs.values() for p in pairs}
  aligned = s.layout.positions == 'aligned'
  val = {}
  for n in sorted(tests):
    rng = np.random.default_rng([config.seed, 7919, n])
    count = min(st.val_per_length, (data.operands_of_length(n) ** 2 - len(test_pairs[n])) // 2)
    pairs = data.distinct_pairs(rng, count, lambda n=n: (n, n), held)
    held.update(pairs)
    val[n] = ListSource([to_record(**data.addition_example(a, b, aligned), digits=n)
                         for a, b in pairs])
  handle = lock.acquire(workdir) if jax.process_index() == 0 else None
  try:
    with train.StopSignals() as signals:
      run = _Run(s=s, workdir=workdir, signals=signals, val=val, tests=tests, held_out=held,
                 weights=weights, verifier=verifier, ratings=ratings)
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
    report.write(workdir, rows)
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
                     selection['kept'], report.pct(selection['label_precision']))
        if not kept:
          logging.warning('round %d kept nothing (theta=%s): it trains on the original data '
                          'and earlier rounds\' samples only.', r, st.theta)
      kept_all += kept
      row, params = _fit_round(run, directory, r, kept_all, params,
                               {'run': 'self', 'round': r, **selection}, t0)
      if row is None:
        return None
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
      head = {'run': 'control', 'round': r, 'digits': _train_range(s.config)}
      row, params = _fit_round(run, directory, r, [], params, head, time.time())
      if row is None:
        return None
      params = finish(directory, row, params)
  report.write(workdir, rows)
  logging.info('self-training report: %s\n%s', os.path.join(workdir, 'rounds.md'),
               report.markdown(rows))
  return rows


def _train_range(config):
  a = config.data.addition
  return f'{a.min_digits}-{a.max_digits}'


def _brief(row):
  test = ' '.join(f'{k}:{100 * v:.0f}' for k, v in row['test'].items())
  return f"val exact {report.pct(row['val_exact'])}; test exact % by digits {test}"
