"""The training loop around the pure step: resume, steps, metrics one step late, periodic
validation and checkpoints, stop. It knows no task metric, model kind or evaluator: the
assembled run hands it the resume check and (for config.train.select_metric) the validation
scorer, and the modes run the evaluators on what it returns."""
import contextlib
import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from selffb import checkpoint
from selffb import metrics as metrics_lib
from selffb import runtime
from selffb import sharding
from selffb.data import pipeline
from selffb.data import tokenizers
from selffb.train import state as state_lib
from selffb.train import step as step_lib
from selffb.train import validation


class TrainingDiverged(RuntimeError):
  pass


def fmt_time(seconds):
  seconds = int(max(seconds, 0))
  return f'{seconds // 60}m{seconds % 60:02d}s'


class Progress:
  """Train metrics pulled to the host one step late and written, averaged, every log_every
  steps, with tokens/s and an ETA that leave out the pauses for evaluation and checkpoints."""

  def __init__(self, writer, s, step, label='', steps_after=0):
    self.writer, self.pending = writer, []  # pending: steps whose metrics are not yet written.
    self.label, self.steps_after = label, steps_after  # Steps_after: the job's, after this run.
    self.num_steps = s.config.train.num_steps
    self.tokens_per_step = s.config.data.batch_size * s.seq_len
    self.schedule = s.schedule
    self.t_log, self.step_log, self.paused, self.compile_s = time.time(), step, 0.0, None

  def first_step_done(self, step, metrics, t0):
    """Times the first step (mostly compilation) and starts the throughput clock after it."""
    jax.block_until_ready(metrics)
    self.compile_s = time.time() - t0
    self.t_log, self.step_log, self.paused = time.time(), step, 0.0

  @contextlib.contextmanager
  def pause(self):
    start = time.time()
    try:
      yield
    finally:
      self.paused += time.time() - max(start, self.t_log)  # A flush inside restarts the clock.

  def flush(self, upto):
    """Writes the mean of the pending metrics up to step `upto`."""
    logged = [p for p in self.pending if p['step'] <= upto]
    if not logged:
      return
    ms = jax.device_get([p['metrics'] for p in logged])
    mean = {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
    mean['lr'] = float(self.schedule(upto - 1))
    timed = upto - self.step_log
    rate = timed / max(time.time() - self.t_log - self.paused, 1e-9) if timed > 0 else None
    if rate is not None:
      mean['tokens_per_s'] = rate * self.tokens_per_step
    self.writer.write(upto, {f'train/{k}': v for k, v in mean.items()})
    eta = '-'
    if rate is not None:
      eta = fmt_time((self.num_steps - upto) / max(rate, 1e-9))
      if self.steps_after:
        eta += f', job {fmt_time((self.num_steps - upto + self.steps_after) / max(rate, 1e-9))}'
    logging.info('%sstep %5d/%d | loss %.4f ce %.4f acc %.3f F %.3f scale %.2f | lr %.2e | '
                 '%s tok/s | ETA %s', self.label, upto, self.num_steps, mean['loss'], mean['ce'],
                 mean['accuracy'], mean['mean_f'], mean['feedback_scale'], mean['lr'],
                 '-' if rate is None else f'{mean["tokens_per_s"]:,.0f}', eta)
    self.pending = [p for p in self.pending if p['step'] > upto]
    self.t_log, self.step_log, self.paused = time.time(), upto, 0.0


@dataclasses.dataclass
class _Run:
  """The loop's state between its functions."""
  s: Any
  state: Any
  best_params: Any
  book: dict  # Early stopping and the step RNG, saved with every checkpoint.
  step_rng: Any
  train_iter: Any
  val_batches: list
  manager: Any
  p_train: Any
  p_eval: Any
  progress: Progress
  keep_best: bool
  config_dict: dict
  scorer: Any  # params -> the task's validation report, for config.train.select_metric.


def _check_resume(manager, s, params):
  """The settings changed since the newest checkpoint (raises where it cannot resume), by the
  assembled run's resume check."""
  saved = checkpoint.saved_config(manager)
  changed = {} if saved is None else s.resume_changes(saved, s.config, params)
  if changed:
    logging.warning('resuming with changed settings: %s', ', '.join(
        f'{k} {v[0]!r} -> {v[1]!r}' for k, v in changed.items()))
  return changed


def _forget_best(book, changed, task):
  """Early stopping starts afresh when the task or its data changed (the seed, the task, or one
  of the task's DATA_KEYS), whose best parameters belong to other data, or when
  train.select_metric did, whose best was by another measure. Returns (whether it did, whether
  the data changed)."""
  data = [k for k in changed if k.startswith(('seed', 'data.task') + task.DATA_KEYS)]
  why = data + [k for k in changed if k == 'train.select_metric']
  if why:
    logging.warning('changed since the checkpoint: %s; early stopping starts afresh and the best '
                    'parameters so far are dropped%s.', ', '.join(why),
                    ', and the data iterator starts afresh' if data else '')
    book.update(best_val_ce=float('inf'), best_score=-float('inf'), best_step=0, bad_evals=0,
                stopped=False)
  return bool(why), bool(data)


def _data(s):
  """(training iterator, validation batches) in the task's format."""
  c, task = s.config, s.task
  dataset = task.train_dataset(s.splits['train'], s.tokenizer, s.seq_len, c.data.batch_size,
                               c.seed, jax.process_index(), jax.process_count(), s.fmt)
  val = task.eval_batches(s.splits['validation'], s.tokenizer, c.data.eval_batch_size, s.fmt)
  return pipeline.make_iterator(dataset), val


def _start(s, workdir, init, keep_best, progress_args):
  """Builds the state, steps and data, and resumes from workdir's newest checkpoint."""
  config = s.config
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  state, state_sh = state_lib.init_state(s, init_rng)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('model: %s parameters; train seq_len %d; mesh %s', f'{n_params:,}', s.seq_len,
               dict(s.mesh.shape))
  manager = checkpoint.make_manager(workdir, config.train.max_checkpoints)
  changed = _check_resume(manager, s, state.params)
  tokenizers.check_run_copy(s.tokenizer, workdir, manager.latest_step() is not None)
  p_train, p_eval = step_lib.compile_steps(s, state_sh)
  train_iter, val_batches = _data(s)
  book = {'best_val_ce': float('inf'), 'best_score': -float('inf'), 'best_step': 0,
          'bad_evals': 0, 'stopped': False,
          'rng': np.asarray(jax.random.key_data(step_rng)).tolist()}
  init_params, init_opt_state = init
  if callable(init_params):  # A fresh run's only: a checkpoint holds the parameters.
    init_params = init_params(state.params) if manager.latest_step() is None else None
  if init_opt_state is not None and manager.latest_step() is None:
    state = state.replace(opt_state=init_opt_state(state))
  if init_params is not None:
    # A copy: the step donates the state, and the caller may still need init_params.
    state = state.replace(params=jax.tree.map(jnp.copy, jax.device_put(init_params,
                                                                        state_sh.params)))
  best_params = state.params
  restored = checkpoint.restore(manager, state, state.params)
  if restored is not None:
    step, state, best_params, data_state, book = restored
    # Checkpoints written before select_metric existed hold the best val CE alone.
    book.setdefault('best_score', -book['best_val_ce'])
    forgot, data_changed = _forget_best(book, changed, s.task)
    if forgot:
      best_params = state.params
    if not data_changed:
      train_iter.set_state(data_state)
    logging.info('resumed from the checkpoint at step %d in %s', step, workdir)
  step = int(state.step)
  writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0, keep_until=step)
  runtime.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
  run = _Run(s=s, state=state, best_params=jax.tree.map(jnp.copy, best_params), book=book,
             step_rng=jax.random.wrap_key_data(jnp.asarray(book['rng'], jnp.uint32)),
             train_iter=train_iter, val_batches=val_batches, manager=manager, p_train=p_train,
             p_eval=p_eval, progress=Progress(writer, s, step, *progress_args),
             keep_best=keep_best,
             config_dict=json.loads(config.to_json_best_effort()),
             scorer=s.scorer(s, val_batches, s.splits['validation'].labels)
             if config.train.select_metric else None)
  return run, step, n_params


def _save(run, step):
  run.progress.flush(step)  # Every step up to a checkpoint is in metrics.jsonl before it is.
  checkpoint.save(run.manager, step, run.state,
                  run.best_params if run.keep_best else run.state.params,
                  run.train_iter.get_state(), run.book, run.config_dict)


def _validate(run, step):
  """Validation CE and friends (and the task's scores, with config.train.select_metric); keeps
  the best parameters by val CE (lower is better) or by the selected score (higher is better)
  and counts evaluations without gain."""
  c, book = run.s.config.train, run.book
  val = validation.evaluate(run.p_eval, run.state.params, run.val_batches, run.s.mesh,
                                run.s.task.EVAL_KEYS)
  if run.scorer is not None:
    val.update(run.scorer(run.state.params)['scores'])
  run.progress.writer.write(step, {f'val/{k}': v for k, v in val.items()})
  metric = c.select_metric or 'ce'
  score = val[c.select_metric] if c.select_metric else -val['ce']
  if score > book['best_score']:
    book.update(best_val_ce=val['ce'], best_score=score, best_step=step, bad_evals=0)
    run.best_params = jax.tree.map(jnp.copy, run.state.params)
  else:
    book['bad_evals'] += 1
  extra = ''.join(f' {k} {val[k]:.4f}' for k in ('bits_per_byte',) + getattr(
      run.s.task, 'SCORES', ()) if k in val)
  logging.info('eval  step %d | val ce %.4f ppl %.3f token acc %.4f teacher-forced seq exact '
               '%.4f%s | best %s %.4f @ %d',
               step, val['ce'], val['perplexity'], val['accuracy'], val['exact'], extra, metric,
               abs(book['best_score']), book['best_step'])
  if c.patience and book['bad_evals'] >= c.patience:
    book['stopped'] = True
    logging.info('early stop: no validation improvement in %d evaluations', c.patience)


def _one_step(run, step):
  """Runs step `step` + 1; checks and logs the step before it, which is done or nearly."""
  c, progress = run.s.config.train, run.progress
  data_state = run.train_iter.get_state()
  batch = next(run.train_iter)
  batch = sharding.put_batch(run.s.mesh, {k: batch[k] for k in run.s.task.BATCH_KEYS
                                          if k in batch})
  t0 = time.time()
  run.state, m = run.p_train(run.state, batch, run.step_rng)
  step += 1
  if progress.compile_s is None:
    progress.first_step_done(step, m, t0)
  if progress.pending:
    prev = progress.pending[-1]
    if int(prev['metrics']['nonfinite_streak']) >= c.max_nonfinite_steps:
      progress.flush(prev['step'])
      raise TrainingDiverged(
          f'{c.max_nonfinite_steps} consecutive steps up to step {prev["step"]} had a '
          'non-finite loss or gradient and were skipped; the last was fed the batch at data '
          f'iterator state {prev["data"]}. Parameters are unchanged since the last good '
          f'step and the checkpoint at step {run.manager.latest_step()} is intact: check the '
          'data and config.optim (lr, clip_norm), then rerun to resume from it.')
    if prev['step'] % c.log_every == 0:
      progress.flush(prev['step'])
  progress.pending.append({'step': step, 'metrics': m, 'data': data_state})
  return step


def _steps(run, step, signals):
  """Steps until num_steps, an early stop or a signal; returns (step, the signal or None)."""
  c, book = run.s.config.train, run.book
  while step < c.num_steps and not book['stopped']:
    step = _one_step(run, step)
    with run.progress.pause():  # Evaluation and checkpointing stay out of tokens/s.
      if step % c.eval_every == 0 or step == c.num_steps:
        _validate(run, step)
      if signals.stop_at(step):
        return step, signals.received
      if step % c.checkpoint_every == 0 and step < c.num_steps and not book['stopped']:
        _save(run, step)
  return step, None


def train_loop(s, workdir, signals, init_params=None, keep_best=True, label='', steps_after=0,
               init_opt_state=None):
  """The training loop in workdir (resuming its latest checkpoint); returns (summary, best
  params), or ({'steps', 'stopped_by'}, None) when a signal stopped it after a checkpoint.

  `init_params` (a fresh run only) replace the initial parameters: a self-training round starts
  from the previous round's. A function of the initial parameters may stand in their place
  (config.model.init_from's, called only when there is no checkpoint to resume); likewise
  `init_opt_state(initial state)`, the optimizer state a fresh run starts from (a self-training
  round with config.selftrain.keep_optimizer: the last round's). `keep_best=False`: the "best"
  parameters saved and returned are simply the latest ones. `label` starts each progress line;
  `steps_after`, the training steps the job runs after this loop, extends the ETA to the whole
  job.
  """
  t_start = time.time()
  run, step, n_params = _start(s, workdir, (init_params, init_opt_state), keep_best,
                               (label, steps_after))
  step, stopped_by = _steps(run, step, signals)
  run.progress.flush(step)
  if run.manager.latest_step() != step:
    if run.book['best_val_ce'] == float('inf'):
      _validate(run, step)
    _save(run, step)
  run.manager.wait_until_finished()
  run.progress.writer.close()
  if stopped_by:
    logging.info('stopped by %s at step %d: checkpoint written; rerun the same command to '
                 'resume.', stopped_by, step)
    return {'steps': step, 'stopped_by': stopped_by}, None
  best = run.best_params if keep_best else run.state.params
  summary = {'steps': step, 'best_step': run.book['best_step'],
             'best_val_ce': run.book['best_val_ce'], 'early_stopped': run.book['stopped'],
             'compile_s': run.progress.compile_s, 'wall_s': time.time() - t_start,
             'parameters': n_params}
  if run.s.config.train.select_metric:
    summary[f'best_val_{run.s.config.train.select_metric}'] = run.book['best_score']
  return summary, best
