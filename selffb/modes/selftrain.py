"""Iterative self-training: train, sample, score, keep the good samples, retrain, repeat.

Round 0 trains on the task's training set (or takes a train run's parameters). Round r draws new
problems one level harder than round r-1 (for addition, one digit longer), samples k candidates
for each with the KV-cache sampler, scores every candidate with Q = sum_i w_i f_i over the
sources in `config.selftrain.weights`, keeps each prompt's best candidate when Q >= theta (then,
optionally, only the top share), and trains from the current weights on the training set mixed
with everything kept so far (by `mixing`: selftrain_recipe.py). Rounds stop at a target, a round
cap, or when validation stops improving. A control arm repeats the same rounds without the
self-labelled data. The task supplies the problems, the exact verifier and the answer form
through its hooks.

Each round is a directory under <workdir>/rounds (the control's under <workdir>/control):
`kept.jsonl` (every kept sample with its score, sources and whether it is correct),
`selection.json`, the round's training checkpoints and `report.json` (its row). A rerun skips
finished rounds and resumes an unfinished one where it stopped. The report (`rounds.csv`,
`rounds.md`, `accuracy.png`) is rewritten after each round.
"""
import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from selffb import errors
from selffb import provenance
from selffb import runtime
from selffb import sampling
from selffb import tasks
from selffb.assemble import setup as setup_lib
from selffb.evaluators import greedy
from selffb.feedback import scoring
from selffb.feedback import signals
from selffb.modes import consistency
from selffb.modes import selftrain_recipe
from selffb.modes import selftrain_report
from selffb.train import loop
from selffb.train import state as state_lib


def model_dir(workdir):
  """Where a workdir's model is: the workdir itself, or for a self-training run the last
  finished round with checkpoints (rounds/rNN; r00 has none when it came from init_workdir)."""
  rounds = os.path.join(workdir, 'rounds')
  if os.path.isdir(rounds):
    done = sorted((d for d in os.listdir(rounds)
                   if os.path.exists(os.path.join(rounds, d, 'report.json'))
                   and os.path.isdir(os.path.join(rounds, d, 'checkpoints'))),
                  key=lambda d: int(d[1:]) if d[1:].isdigit() else -1)
    if done:
      logging.info('self-training run: using the last finished round, %s', done[-1])
      return os.path.join(rounds, done[-1])
  return workdir


@dataclasses.dataclass
class _Run:
  """What every round of a run shares."""
  s: Any
  workdir: str
  signals: Any
  val: dict  # {level: source}
  tests: dict  # {level: source}
  held_out: set  # Every test and validation problem: never a round's prompt.
  weights: dict
  verifier: Any  # The configured verifier (or None).
  exact: Any  # The task's exact check, which measures label precision whatever the filter.
  ratings: dict
  rows: list = dataclasses.field(default_factory=list)
  kept_rounds: list = dataclasses.field(default_factory=list)  # Each round's kept rows.


def hash_seed(*parts):
  return int(np.random.default_rng(list(parts)).integers(0, 2 ** 31 - 1))


def _evaluate(run, params):
  """Greedy exact match per level on validation and test sets."""
  sources = {**{f'val_{n}': v for n, v in run.val.items()},
             **{f'test_{n}': t for n, t in run.tests.items()}}
  got = greedy.greedy_exact_match(run.s, params, sources, run.s.config.data.eval_batch_size)
  val = {n: got[f'val_{n}'] for n in run.val}
  return {'val_exact': float(np.mean(list(val.values()))),
          'val': {str(n): v for n, v in val.items()},
          'test': {str(n): got[f'test_{n}'] for n in run.tests}}


def _generate(run, params, texts, level, r):
  """k samples of each prompt: (tokens, logprobs) per prompt and sample, prompt-major."""
  s, st, tok = run.s, run.s.config.selftrain, run.s.tokenizer
  sp = sampling.SamplingParams(temperature=float(st.temperature), top_k=int(st.top_k),
                               max_new_tokens=s.task.max_answer_tokens(level, s.fmt))
  prompts = [tok.encode_prompt(t) for t in texts for _ in range(st.samples_per_prompt)]
  return sampling.generate_batches(
      params, prompts, [s.fmt.position_ids(p, tok) for p in prompts],
      batch_size=s.config.data.eval_batch_size,
      seed_of=lambda start: hash_seed(s.config.seed, r, start), model=s.model, cfg=s.model_cfg,
      sp=sp, eos_id=tok.eos_id, pad_id=tok.pad_id, mesh=s.mesh)


def _score(run, text, samples, level, agree=None):
  """A prompt's candidates with every source, their fused score Q and their correctness (the
  exact check measures; it reaches Q only as the verifier, and only when that is weighted).
  `agree`: (answers) -> consistency values, None when unweighted."""
  cands = [run.s.task.candidate(tokens, logprobs, level, run.s.fmt, run.s.tokenizer)
           for tokens, logprobs in samples]
  answers = [c['answer'] for c in cands]
  agreed = agree(answers) if agree else [0.0] * len(cands)
  for c, share, same in zip(cands, scoring.vote_shares(answers), agreed):
    c['vote'], c['consistency'] = share, same
    c['verifier'] = (float(bool(run.verifier(text, c['answer'])))
                     if run.verifier and 'verifier' in run.weights else 0.0)
    c['rating'] = run.ratings.get((text, c['answer']), 0.0)
    c['q'] = signals.fuse(c, run.weights)
    c['correct'] = bool(run.exact(text, c['answer']))
    c['prompt'] = text
  return cands


def _sample_round(run, params, r, level):
  """Draws, samples, scores and selects round r's self-labelled data: (summary, kept rows)."""
  s, st = run.s, run.s.config.selftrain
  texts = s.task.round_prompts(s.config, r, level, run.held_out, s.fmt)
  outs, k = _generate(run, params, texts, level, r), st.samples_per_prompt
  agree = consistency.round_scorers(s, run.weights, params, texts, level) or [None] * len(texts)
  groups = [_score(run, text, outs[i * k:(i + 1) * k], level, agree[i])
            for i, text in enumerate(texts)]
  kept = scoring.select(groups, st.theta, st.keep_top_fraction)
  every = [c for g in groups for c in g]
  summary = {'digits': level, 'prompts': len(texts), 'generated': len(every),
             'kept': len(kept), 'label_precision': scoring.label_precision(kept),
             'candidate_accuracy': sum(c['correct'] for c in every) / len(every),
             **consistency.summary(every, run.weights)}
  rows = [{'prompt': c['prompt'], 'answer': c['answer'], 'digits': level, 'q': c['q'],
           'correct': c['correct'], 'scores': {k: c[k] for k in scoring.SOURCES}} for c in kept]
  return summary, rows


def _progress(run, arm, r):
  """train_loop's label and the training steps left in the job after this round (at most: the
  rounds may stop early), so progress lines name the round and give an ETA for the whole job."""
  st = run.s.config.selftrain
  spr, rounds = st.steps_per_round, st.rounds
  after = (rounds - r) * spr + (rounds * spr if st.control and arm == 'self' else 0)
  return {'label': f'{arm} round {r}/{rounds} | ', 'steps_after': after}


def _fit_round(run, directory, r, self_rounds, params, head, t0, previous_dir):
  """Trains round r in `directory` (resuming it) on the training set mixed with self_rounds
  (each round's kept rows), then evaluates it; returns (row, params), or (None, None) when a
  signal stopped the training. `previous_dir`: the round before, whose optimizer state the
  round starts from with config.selftrain.keep_optimizer."""
  s = run.s
  config = selftrain_recipe.round_config(s.config, r, s.config.selftrain.steps_per_round)
  rounds = [[s.task.to_record(x['prompt'], x['answer'], x['digits']) for x in kept]
            for kept in self_rounds]
  source = selftrain_recipe.round_source(s.splits['train'], rounds, config.selftrain)
  seq_len = max([s.seq_len] + [s.task.example_length(x, s.fmt) for rnd in rounds for x in rnd])
  if seq_len > config.model.max_len:
    raise errors.ConfigError(f'round data needs {seq_len} tokens but config.model.max_len='
                             f'{config.model.max_len}; raise it.')
  rs = setup_lib.for_round(s, config, splits={**s.splits, 'train': source}, seq_len=seq_len)
  carry = (selftrain_recipe.previous_optimizer(previous_dir, config.train.max_checkpoints)
           if config.selftrain.keep_optimizer else None)
  summary, params = loop.train_loop(rs, directory, run.signals, init_params=params,
                                    keep_best=False, init_opt_state=carry,
                                    **_progress(run, head['run'], r))
  if 'stopped_by' in summary:
    return None, None
  return {**head, 'steps': summary['steps'], **_evaluate(run, params),
          'wall_s': time.time() - t0}, params


def _finish(run, directory, row):
  runtime.write_json(os.path.join(directory, 'report.json'), row)
  run.rows.append(row)
  selftrain_report.write(run.workdir, run.rows)
  logging.info('%s round %d done: %s', row['run'], row['round'], _brief(row))


def _load_done(run, directory):
  """True, with its row appended, if the round in `directory` finished."""
  path = os.path.join(directory, 'report.json')
  if not os.path.exists(path):
    return False
  with open(path) as f:
    run.rows.append(json.load(f))
  return True


def _restore_params(run, directory):
  return state_lib.restore_best_params(run.s, directory)[1]


def _run_round(run, root, r, params, base_dir, make_data):
  """Round r of an arm under `root`, from `params` (restored from the round before, or round 0
  in base_dir, when None). `make_data(directory, params)` gives (each round's kept rows, row
  head), or None to stop. Returns the round's parameters, or None when a signal stopped it."""
  directory = os.path.join(root, f'r{r:02d}')
  previous_dir = os.path.join(root, f'r{r - 1:02d}') if r > 1 else base_dir
  if params is None:
    params = _restore_params(run, previous_dir)
  os.makedirs(directory, exist_ok=True)
  t0 = time.time()
  got = make_data(directory, params)
  if got is None:
    return None
  records, head = got
  row, params = _fit_round(run, directory, r, records, params, head, t0, previous_dir)
  if row is not None:
    _finish(run, directory, row)
  return params


def _self_data(run, r, level):
  """make_data for round r of the self arm: the kept samples (sampled once, then read back)."""

  def make(directory, params):
    kept_path = os.path.join(directory, 'kept.jsonl')
    if os.path.exists(kept_path):
      with open(os.path.join(directory, 'selection.json')) as f:
        selection = json.load(f)
      kept = runtime.read_jsonl(kept_path)
    else:
      if run.signals.received:  # Stopped during the last evaluation: stop before sampling.
        return None
      selection, kept = _sample_round(run, params, r, level)
      # selection.json first: kept.jsonl marks the pair complete.
      runtime.write_json(os.path.join(directory, 'selection.json'), selection)
      runtime.write_jsonl(kept_path, kept)
      logging.info('round %d: level %d prompts %d, candidates %d, kept %d, label precision %s',
                   r, level, selection['prompts'], selection['generated'], selection['kept'],
                   selftrain_report.pct(selection['label_precision']))
      if not kept:
        logging.warning('round %d kept nothing (theta=%s): it trains on the original data and '
                        "earlier rounds' samples only.", r, run.s.config.selftrain.theta)
    run.kept_rounds.append(kept)
    return run.kept_rounds, {'run': 'self', 'round': r, **selection}

  return make


def _round_zero(run, r0, base_dir):
  """Round 0's parameters: trained in r0, or taken from init_workdir; None when stopped."""
  s, t0 = run.s, time.time()
  if s.config.selftrain.init_workdir:
    params, steps = _restore_params(run, base_dir), 0
  else:
    summary, params = loop.train_loop(s, r0, run.signals, **_progress(run, 'self', 0))
    if 'stopped_by' in summary:
      return None
    steps = summary['steps']
  _finish(run, r0, {'run': 'self', 'round': 0, 'digits': s.task.train_range(s.config),
                    'steps': steps, **_evaluate(run, params), 'wall_s': time.time() - t0})
  return params


def _stop_after(run, r, best):
  """(stop?, best) after round r: the target level reached, or `patience` rounds without a
  better mean validation exact match (best = (value, rounds without gain))."""
  st, row = run.s.config.selftrain, run.rows[-1]
  best = (row['val_exact'], 0) if row['val_exact'] > best[0] else (best[0], best[1] + 1)
  if st.target_digits and row['val'].get(str(st.target_digits), 0) >= st.target_accuracy:
    logging.info('target reached: validation exact match at level %d >= %s', st.target_digits,
                 st.target_accuracy)
    return True, best
  if st.patience and best[1] >= st.patience:
    logging.info('stopping: no better validation exact match in %d rounds', st.patience)
    return True, best
  return False, best


def _self_arm(run, base_dir, params):
  """The self rounds; returns the last round run, or None when stopped."""
  s, st = run.s, run.s.config.selftrain
  root, start = os.path.join(run.workdir, 'rounds'), s.task.start_level(s.config)
  best, last = (run.rows[0]['val_exact'], 0), 0
  for r in range(1, st.rounds + 1):
    if jax.process_count() > 1:  # Every host decides what is done from the same files.
      multihost_utils.sync_global_devices(f'selftrain round {r}')
    directory = os.path.join(root, f'r{r:02d}')
    if _load_done(run, directory):
      run.kept_rounds.append(runtime.read_jsonl(os.path.join(directory, 'kept.jsonl')))
      params = None
    else:
      params = _run_round(run, root, r, params, base_dir, _self_data(run, r, start + r - 1))
      if params is None:
        return None
    last = r
    stop, best = _stop_after(run, r, best)
    if stop:
      break
  return last


def _control_arm(run, base_dir, params, last):
  """The same rounds and steps without the self-labelled data; False when stopped."""
  root = os.path.join(run.workdir, 'control')
  digits = run.s.task.train_range(run.s.config)
  for r in range(1, last + 1):
    if _load_done(run, os.path.join(root, f'r{r:02d}')):
      params = None
      continue
    head = {'run': 'control', 'round': r, 'digits': digits}
    params = _run_round(run, root, r, params, base_dir, lambda directory, p, head=head: ([], head))
    if params is None:
      return False
  return True


def _rounds(run):
  st, workdir = run.s.config.selftrain, run.workdir
  r0 = os.path.join(workdir, 'rounds', 'r00')
  os.makedirs(os.path.dirname(r0), exist_ok=True)
  # Where round 0's parameters live: r00's checkpoints, or the run it was taken from.
  base_dir = model_dir(st.init_workdir) if st.init_workdir else r0
  params = None
  if not _load_done(run, r0):
    params = _round_zero(run, r0, base_dir)
    if params is None:
      return None
  last = _self_arm(run, base_dir, params)
  if last is None or (st.control and not _control_arm(run, base_dir, params, last)):
    return None
  selftrain_report.write(workdir, run.rows)
  self_rows = [r for r in run.rows if r['run'] == 'self']
  # Written last: marks the run finished (rounds.md is rewritten after every round).
  runtime.write_json(os.path.join(workdir, 'summary.json'), {
      'rounds': self_rows[-1]['round'], 'final': self_rows[-1],
      'wall_s': sum(r['wall_s'] for r in run.rows)})
  logging.info('self-training report: %s\n%s', os.path.join(workdir, 'rounds.md'),
               selftrain_report.markdown(run.rows))
  return run.rows


def inputs(config):
  """--mode=selftrain's own checks, run with the config's: the task's hooks, the verifier and
  the ratings file, as (problems, (weights, exact check, verifier, ratings))."""
  st, task = config.selftrain, tasks.get(config.data.task)
  if not task.SUPPORTS_SELFTRAIN:
    return [f'--mode=selftrain needs a task with self-training hooks; config.data.task='
            f'{config.data.task!r} has none (addition has).'], None
  weights = scoring.normalize_weights(st.weights.to_dict())
  exact = task.verifier(task.batch_format(config))
  verifier = scoring.resolve_verifier(st.verifier, exact)
  if weights.get('verifier') and verifier is None:
    return ['config.selftrain.weights.verifier > 0 but config.selftrain.verifier is empty; '
            'name one.'], None
  return consistency.config_problems(config, task, weights), (
      weights, exact, verifier, scoring.load_ratings(st.ratings_file))


def run_selftrain(config, workdir):
  """--mode=selftrain: the rounds in workdir (resuming), then the report; returns its rows."""
  s = setup_lib.setup(config, workdir, mode_inputs=inputs)
  weights, exact, verifier, ratings = s.mode_inputs
  val, tests, held = s.task.held_out_sets(config, s.splits, s.fmt)
  with runtime.locked(workdir), runtime.StopSignals() as stop_signals:
    runtime.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
    provenance.record(workdir)
    run = _Run(s=s, workdir=workdir, signals=stop_signals, val=val, tests=tests, held_out=held,
               weights=weights, verifier=verifier, exact=exact, ratings=ratings)
    return _rounds(run)


def _brief(row):
  test = ' '.join(f'{k}:{100 * v:.0f}' for k, v in row['test'].items())
  return (f"greedy val exact (mean over levels) {selftrain_report.pct(row['val_exact'])}; "
          f"greedy test exact % by level {test}")
