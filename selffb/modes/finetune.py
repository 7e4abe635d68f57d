"""--mode=finetune: train on recorded feedback (a task with SUPPORTS_FINETUNE, 'feedback') from
a run's best parameters (config.finetune.init_workdir) or from scratch, then report what was
learned.

The starting parameters are the frozen reference of the preference terms: each training row's
log-probability under them is computed once, before the first step, and travels with the batch
as data. Without config.data.feedback.train_path the base task writes an example file first,
rating the starting model's own answers. The report (finetune.md, finetune.json,
logprobs.jsonl: one line per scored response with its record's line, id and source) gives each
kind of response's mean per-token log-probability before and after, the preference accuracy, how
often corrections beat the responses they replaced, and config.evals before and after.
summary.json, written last, marks a finished run.
"""
import dataclasses
import functools
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from selffb import evaluators
from selffb import metrics as metrics_lib
from selffb import provenance
from selffb import runtime
from selffb import sampling
from selffb import sharding
from selffb import tasks
from selffb.assemble import checks
from selffb.assemble import resume
from selffb.assemble import setup as setup_lib
from selffb.modes import run_config
from selffb.modes import selftrain
from selffb.train import loop
from selffb.train import state as state_lib
from selffb.train import step as step_lib


def inputs(config, workdir=None):
  """--mode=finetune's own checks, run with the config's, as (problems, nothing built): a task
  with finetune hooks; an init run (if any) that exists, with this model, tokenizer and sequence
  format; and, resuming in `workdir`, the starting run it began from (the preference terms'
  reference)."""
  task = tasks.get(config.data.task)
  if not getattr(task, 'SUPPORTS_FINETUNE', False):
    return [f"--mode=finetune trains on recorded feedback: config.data.task="
            f"{config.data.task!r} has no finetune hooks; use 'feedback'."], None
  found, init = [], config.finetune.init_workdir
  if workdir and os.path.exists(os.path.join(workdir, 'config.json')):
    before = run_config.saved(workdir).get('finetune', {}).get('init_workdir', '')
    if before != init:
      found.append(f'{workdir} was fine-tuned from finetune.init_workdir={before!r}, now '
                   f'{init!r}: the reference of its preference terms would change mid-run. Use a '
                   'new --workdir.')
  if init:
    found.extend(_init_problems(config, init, task))
  return found, None


def check_inputs(config, workdir=None):
  """ConfigError listing the problems of `inputs`, if any."""
  checks.raise_problems(inputs(config, workdir)[0])


def _init_problems(config, init, task):
  """The first reason the run in `init` cannot start this fine-tune, if any."""
  try:
    saved = resume.migrate(run_config.saved(init))
  except FileNotFoundError as e:
    return [f'config.finetune.init_workdir: {e}']
  current = metrics_lib.flatten(config.to_dict(), '.')
  differ = [k for k in sorted(set(saved) | set(current))
            if k.startswith(('model.', 'data.tokenizer', 'data.sentencepiece'))
            and saved.get(k) != current.get(k)]
  if differ:
    return [f'config.finetune.init_workdir={init!r} was trained with another model: ' +
            ', '.join(f'{k} {saved.get(k)!r} (run) vs {current.get(k)!r}' for k in differ) +
            '; set those keys to the run\'s values (e.g. --config.model.d_model=...).']
  run = ml_collections.ConfigDict(resume.unflatten(saved))
  trained = dataclasses.replace(tasks.get(run.data.task).batch_format(run), shift=0)
  if trained != task.batch_format(config):
    return [f'config.finetune.init_workdir={init!r} was trained on sequences laid out as '
            f'{trained} (task {run.data.task!r}), but these records would be laid out as '
            f'{task.batch_format(config)}; set config.data.feedback.base_task (and its format '
            'keys) to match the run.']
  return []


def start_params(s):
  """The init run's best parameters, or the initialisation train_loop would make."""
  init = s.config.finetune.init_workdir
  if init:
    step, params, _ = state_lib.restore_best_params(s, selftrain.model_dir(init))
    logging.info('starting from %s (step %d); it is the frozen reference', init, step)
    return params
  init_rng, _ = jax.random.split(jax.random.key(s.config.seed))  # As train_loop splits it.
  logging.info('starting from scratch (seed %d); the initialisation is the reference',
               s.config.seed)
  return state_lib.init_state(s, init_rng)[0].params


def _answer_fn(s, params):
  """(prompt texts, max new tokens) -> the model's continuations under config.sample."""
  tok, c = s.tokenizer, s.config.sample

  def answers(texts, max_new_tokens):
    prompts = [tok.encode_prompt(t) for t in texts]
    sp = dataclasses.replace(sampling.SamplingParams.from_config(c),
                             max_new_tokens=max_new_tokens)
    outs = sampling.generate_batches(
        params, prompts, [s.fmt.position_ids(p, tok) for p in prompts],
        batch_size=s.config.data.eval_batch_size, seed_of=lambda start: c.seed + start,
        model=s.model, cfg=s.model_cfg, sp=sp, eos_id=tok.eos_id, pad_id=tok.pad_id,
        mesh=s.mesh)
    return [tok.decode(tokens) for tokens, _ in outs]

  return answers


def write_example(s, params, path):
  """The base task's example feedback, answered by `params` (None: from scratch, no model)."""
  base = tasks.get(s.config.data.feedback.base_task)
  answer_fn = _answer_fn(s, params) if s.config.finetune.init_workdir else None
  found = base.example_feedback(s.config, answer_fn)
  runtime.write_jsonl(path, found)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('selffb: feedback example written')
  logging.info('wrote an example feedback file of %d records (%s answers): %s', len(found),
               'the starting model\'s' if answer_fn else 'synthetic', path)


def row_logps(s, params, source):
  """(summed log p, tokens) of every row of `source`'s units (2 a unit), under `params`."""
  shardings = jax.tree.map(lambda x: x.sharding, state_lib.abstract_params(s))
  fn = step_lib.jit_eval_step(s, shardings, eval_fn=s.task.row_logps, name='row_logps')
  got = [jax.device_get(fn(params, sharding.put_global(s.mesh, {
      k: b[k] for k in s.task.ROW_KEYS if k in b})))
         for b in s.task.eval_batches(source, s.tokenizer, s.config.data.eval_batch_size, s.fmt)]
  n = 2 * len(source)
  return (np.concatenate([g['logp'] for g in got])[:n],
          np.concatenate([g['tokens'] for g in got])[:n])


def _prepare(s, workdir):
  """(Setup with data, start params): the example written first if needed (under the lock)."""
  if jax.process_count() > 1:  # Every host decides before process 0 may write the example.
    multihost_utils.sync_global_devices('selffb: feedback example?')
  if s.splits:
    return s, start_params(s)
  train_path, _ = s.task.paths(s.config, setup_lib.data_dir_of(s.config, workdir))
  start = None
  if not os.path.exists(train_path):
    start = start_params(s)
    write_example(s, start, train_path)
  s = setup_lib.with_data(s, workdir)  # Reads and validates every record.
  return s, start if start is not None else start_params(s)


def finetune(config, workdir):
  """Fine-tunes in workdir (resuming), reports; returns the summary. A bad config or record
  stops it before anything is written."""
  # With config.data.feedback.train_path every record is checked now, as every config key; the
  # generated example is written (and read) under the lock.
  s = setup_lib.setup(config, workdir, with_data=bool(config.data.feedback.train_path),
                      mode_inputs=functools.partial(inputs, workdir=workdir))
  with runtime.locked(workdir), runtime.StopSignals() as signals:
    s, start = _prepare(s, workdir)
    provenance.record(workdir)
    before = {name: row_logps(s, start, s.splits[name]) for name in ('train', 'train_all',
                                                                     'validation')}
    s = dataclasses.replace(s, splits={**s.splits, 'train': s.task.with_reference(
        s.splits['train'], before['train'][0])})
    evals = evaluators.build(config.evals, s)
    evals_before = evaluators.run(evals, start)
    # As --mode=train: the parameters of the best validation measure (the held-out preferred
    # responses' CE, or config.train.select_metric) are the fine-tuned ones reported.
    summary, params = loop.train_loop(s, workdir, signals, init_params=start)
    if 'stopped_by' in summary:
      return summary
    evals_after = evaluators.run(evals, params)
    report = _report(s, workdir, params, before)
    summary.update(evals_after)  # As --mode=train's: a sweep reads them alike.
    summary['before'] = evals_before
    summary.update(_headline(report['validation']))
    _log(summary, evals, evals_before, evals_after)
    runtime.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary


def _report(s, workdir, params, before):
  """finetune.md and logprobs.jsonl for train_all and validation; returns the summaries."""
  out, text, table = {}, ['## Recorded feedback, before and after fine-tuning', ''], []
  for name, label in (('validation', 'validation (held out)'), ('train_all', 'train')):
    after = row_logps(s, params, s.splits[name])
    rows = s.task.report_rows(s.splits[name], before[name], after)
    table += [{'split': name, **r} for r in rows]
    out[name] = s.task.summarize_report(rows)
    text.append(s.task.report_markdown(label, out[name]))
  runtime.write_jsonl(os.path.join(workdir, 'logprobs.jsonl'), table)
  runtime.write_text(os.path.join(workdir, 'finetune.md'), '\n'.join(text))
  runtime.write_json(os.path.join(workdir, 'finetune.json'), out)
  logging.info('fine-tuning report (%s):\n%s', os.path.join(workdir, 'finetune.md'),
               '\n'.join(text))
  return out


def _headline(val):
  """The held-out split's report as flat numbers for summary.json (and a sweep's table):
  {'feedback': shares in 0..1, 'dlogp': each kind's change of log p per token}."""
  p, f = val['preference_accuracy'], val['correction_above_replaced']
  shares = {'pref_accuracy_before': p['before'], 'pref_accuracy': p['after'],
            'correction_accuracy_before': f['before'], 'correction_accuracy': f['after']}
  return {'feedback': {k: v for k, v in shares.items() if v is not None},
          'dlogp': {c: m['after'] - m['before'] for c, m in val['categories'].items()}}


def _log(summary, evals, before, after):
  lines = [f"done: {summary['steps']} steps in {loop.fmt_time(summary['wall_s'])} "
           f"(compile {summary['compile_s'] or 0:.1f}s); best val CE "
           f"{summary['best_val_ce']:.4f} at step {summary['best_step']}, whose parameters are "
           'reported']
  for name, result in after.items():
    lines.append(f'{name}, starting parameters: {evals[name].describe(before[name])}')
    lines.append(f'{name}, fine-tuned (best): {evals[name].describe(result)}')
  logging.info('\n'.join(lines))
