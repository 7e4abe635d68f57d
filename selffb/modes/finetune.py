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
from selffb import selftrain
from selffb import sharding
from selffb import tasks
from selffb.modes import run_config
from selffb.train import checks
from selffb.train import loop
from selffb.train import setup as setup_lib
from selffb.train import state as state_lib
from selffb.train import step as step_lib


def check_inputs(config, workdir=None):
  """What --mode=finetune needs beyond the config checks: a task with finetune hooks; an init
  run (if any) that exists, with this model, tokenizer and sequence format; and, resuming in
  `workdir`, the starting run it began from (the preference terms' reference)."""
  task = tasks.get(config.data.task)
  if not getattr(task, 'SUPPORTS_FINETUNE', False):
    raise checks.ConfigError(f"--mode=finetune trains on recorded feedback: config.data.task="
                             f"{config.data.task!r} has no finetune hooks; use 'feedback'.")
  init = config.finetune.init_workdir
  if workdir and os.path.exists(os.path.join(workdir, 'config.json')):
    before = run_config.saved(workdir).get('finetune', {}).get('init_workdir', '')
    if before != init:
      raise checks.ConfigError(
          f'{workdir} was fine-tuned from finetune.init_workdir={before!r}, now {init!r}: the '
          'reference of its preference terms would change mid-run. Use a new --workdir.')
  if init:
    _check_init(config, init, task)


def _check_init(config, init, task):
  try:
    saved = checks.migrate(run_config.saved(init))
  except FileNotFoundError as e:
    raise checks.ConfigError(f'config.finetune.init_workdir: {e}') from None
  current = metrics_lib.flatten(config.to_dict(), '.')
  differ = [k for k in sorted(set(saved) | set(current))
            if k.startswith(('model.', 'data.tokenizer', 'data.sentencepiece'))
            and saved.get(k) != current.get(k)]
  if differ:
    raise checks.ConfigError(
        f'config.finetune.init_workdir={init!r} was trained with another model: ' +
        ', '.join(f'{k} {saved.get(k)!r} (run) vs {current.get(k)!r}' for k in differ) +
        '; set those keys to the run\'s values (e.g. --config.model.d_model=...).')
  run = ml_collections.ConfigDict(checks.unflatten(saved))
  trained = dataclasses.replace(tasks.get(run.data.task).batch_format(run), shift=0)
  if trained != task.batch_format(config):
    raise checks.ConfigError(
        f'config.finetune.init_workdir={init!r} was trained on sequences laid out as {trained} '
        f'(task {run.data.task!r}), but these records would be laid out as '
        f'{task.batch_format(config)}; set config.data.feedback.base_task (and its format '
        'keys) to match the run.')


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


def _prepare(config, workdir, s):
  """(Setup with data, start params): the example written first if needed (under the lock)."""
  task = tasks.get(config.data.task)
  data_dir = config.data.data_dir or os.path.join(workdir, 'data')
  train_path, _ = task.paths(config, data_dir)
  start = None
  if jax.process_count() > 1:  # Every host decides before process 0 may write the example.
    multihost_utils.sync_global_devices('selffb: feedback example?')
  if s is None and not os.path.exists(train_path):
    bare = setup_lib.setup(config, workdir, with_data=False)
    start = start_params(bare)
    write_example(bare, start, train_path)
  s = s or setup_lib.setup(config, workdir)  # Reads and validates every record.
  return s, start if start is not None else start_params(s)


def finetune(config, workdir):
  """Fine-tunes in workdir (resuming), reports; returns the summary. A bad config or record
  stops it before anything is written."""
  task = tasks.get(config.data.task)
  check_inputs(config, workdir)
  if config.data.feedback.train_path:  # Every record checked, as every config key.
    s = setup_lib.setup(config, workdir)
  else:
    s = None
    setup_lib.setup(config, workdir, with_data=False)
  with runtime.locked(workdir), runtime.StopSignals() as signals:
    s, start = _prepare(config, workdir, s)
    provenance.record(workdir)
    before = {name: row_logps(s, start, s.splits[name]) for name in ('train', 'train_all',
                                                                     'validation')}
    s = dataclasses.replace(s, splits={**s.splits, 'train': task.with_reference(
        s.splits['train'], before['train'][0])})
    evals = evaluators.build(config.evals, s)
    evals_before = evaluators.run(evals, start)
    summary, params = loop.train_loop(s, workdir, signals, init_params=start, keep_best=False)
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
           f"(compile {summary['compile_s'] or 0:.1f}s)"]
  for name, result in after.items():
    lines.append(f'{name}, starting parameters: {evals[name].describe(before[name])}')
    lines.append(f'{name}, fine-tuned: {evals[name].describe(result)}')
  logging.info('\n'.join(lines))
