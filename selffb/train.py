"""Training: the state, the pure train step, and the loop around it (evaluation.py evaluates)."""
import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import struct
from jax.experimental import multihost_utils

from selffb import checkpoint
from selffb import data
from selffb import evaluation
from selffb import feedback
from selffb import lock
from selffb import metrics as metrics_lib
from selffb import model as model_lib
from selffb import optim
from selffb import sharding
from selffb import validate
from selffb import xla_flags

TRAIN_KEYS = ('inputs', 'targets', 'positions', 'loss_mask') + feedback.BATCH_SOURCES


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class FeedbackSpec:
  """`config.feedback`, validated, as static data for the step."""
  loss: str
  gamma: float
  weights: tuple  # ((source, normalised weight), ...)

  @classmethod
  def from_config(cls, c):
    feedback.check_loss_name(c.loss)
    weights = feedback.validate_weights(c.weights.to_dict())
    return cls(loss=c.loss, gamma=float(c.gamma), weights=tuple(sorted(weights.items())))


def loss_fn(params, batch, rng, denominator, *, model, fb):
  logits_BxTxV, _ = model.apply({'params': params}, batch['inputs'], batch.get('positions'),
                                rngs={'dropout': rng})
  scores = {k: batch[k] for k in feedback.BATCH_SOURCES if k in batch}
  loss, aux = feedback.feedback_loss(
      logits_BxTxV, batch['targets'], batch['loss_mask'], loss=fb.loss, weights=dict(fb.weights),
      gamma=fb.gamma, batch_scores=scores, denominator=denominator)
  return loss, {k: aux[k] for k in ('ce', 'accuracy', 'mean_f')}


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def train_step(state, batch, rng, *, model, tx, fb, accum_steps=1):
  """One optimizer step: `(state, batch, rng) -> (state, metrics)`.

  With accum_steps > 1 the batch is split into that many microbatches, scanned in turn; each
  loss is normalised by the whole batch's token count, so the summed gradients equal the
  gradient of the whole batch.
  """
  rng = jax.random.fold_in(rng, state.step)
  denominator = jnp.sum(batch['loss_mask'])
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, model=model, fb=fb), has_aux=True)
  if accum_steps == 1:
    (loss, aux), grads = grad_fn(state.params, batch, rng, denominator)
  else:
    micro = jax.tree.map(lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch)

    def add(carry, xs):
      i, mb = xs
      out = grad_fn(state.params, mb, jax.random.fold_in(rng, i), denominator)
      return jax.tree.map(jnp.add, carry, out), None

    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, jax.tree.map(
        lambda x: x[0], micro), rng, denominator))
    ((loss, aux), grads), _ = jax.lax.scan(add, zero, (jnp.arange(accum_steps), micro))
  updates, opt_state = tx.update(grads, state.opt_state, state.params, feedback=aux['mean_f'])
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'ce': aux['ce'], 'accuracy': aux['accuracy'],
             'mean_f': aux['mean_f'], 'grad_norm': _global_norm(grads),
             'feedback_scale': optim.feedback_scale(opt_state),
             'nonfinite_streak': optim.nonfinite_streak(opt_state)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything static a run builds from its config before the first step."""
  config: Any
  model_cfg: model_lib.ModelConfig
  tokenizer: data.ByteTokenizer
  layout: data.Layout
  splits: dict
  seq_len: int
  mesh: Any
  tx: optax.GradientTransformationExtraArgs
  fb: FeedbackSpec


def setup(config, workdir, devices=None):
  """Validates the whole config, then builds data, model, optimizer and mesh.

  `devices` (default: all) are the devices the mesh spans.
  """
  devices = jax.devices() if devices is None else devices
  validate.check_config(config, len(devices))
  tokenizer = data.ByteTokenizer()
  mesh = sharding.make_mesh(config.mesh, devices)
  if jax.process_count() > 1:  # One host writes the dataset; the others open it.
    if jax.process_index() == 0:
      data.load_splits(config.data, config.seed, workdir)
    multihost_utils.sync_global_devices('selffb: data written')
  splits = data.load_splits(config.data, config.seed, workdir)
  seq_len = config.data.seq_len or data.longest(splits['train'])
  if seq_len > config.model.max_len:
    raise validate.ConfigError(f'training sequences of {seq_len} tokens exceed '
                               f'config.model.max_len={config.model.max_len}.')
  return Setup(config=config, model_cfg=model_lib.ModelConfig.from_config(config.model),
               tokenizer=tokenizer, layout=data.layout_of(config.data), splits=splits,
               seq_len=seq_len, mesh=mesh,
               tx=optim.make_optimizer(config.optim, config.train.num_steps),
               fb=FeedbackSpec.from_config(config.feedback))


def init_state(s, rng):
  """The train state, created by a jitted init directly into its shardings: parameters and their
  optimizer moments are sharded by the logical-axis rules, never materialised on one device."""
  model = model_lib.Transformer(s.model_cfg)

  def boxed_init(rng):
    params = model.init(rng, jnp.zeros((1, s.seq_len), jnp.int32))['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=s.tx.init(params))

  shardings = sharding.state_shardings(jax.eval_shape(boxed_init, rng), s.mesh,
                                       sharding.logical_rules(s.config.mesh))
  init = jax.jit(lambda rng: nn.unbox(boxed_init(rng)), out_shardings=shardings)
  return init(rng), shardings


def training_model(s):
  """Setup `s`'s Transformer in training mode (dropout on), as `train_step` runs it."""
  return model_lib.Transformer(s.model_cfg.replace(deterministic=False))


def compile_steps(s, state_shardings):
  repl, batch_sh = sharding.replicated(s.mesh), sharding.batch_sharding(s.mesh)
  p_train = jax.jit(functools.partial(train_step, model=training_model(s), tx=s.tx, fb=s.fb,
                                      accum_steps=s.config.train.grad_accum_steps),
                    in_shardings=(state_shardings, batch_sh, repl),
                    out_shardings=(state_shardings, repl), donate_argnums=0,
                    compiler_options=xla_flags.for_mesh(s.config, s.mesh))
  return p_train, evaluation.jit_eval_step(s, state_shardings.params)


def _fmt_time(seconds):
  seconds = int(max(seconds, 0))
  return f'{seconds // 60}m{seconds % 60:02d}s'


class TrainingDiverged(RuntimeError):
  pass


class StopSignals:
  """SIGTERM/SIGINT ask the loop to checkpoint and exit; on several hosts JAX's preemption
  sync point makes every host stop at the same step."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def stop_at(self, step):
    if jax.process_count() > 1:
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = self.received or 'preemption notice'
    return self.received is not None


def train_and_evaluate(config, workdir):
  """Trains (resuming from the latest checkpoint in workdir), then reports; returns the summary.

  Process 0 holds a lock on workdir for the whole run (hosts share the workdir).
  """
  s = setup(config, workdir)  # Fails on a bad config before anything is written.
  handle = lock.acquire(workdir) if jax.process_index() == 0 else None
  try:
    with StopSignals() as signals:
      return train_loop(s, workdir, signals)[0]
  finally:
    if handle is not None:
      lock.release(handle)


def train_loop(s, workdir, signals, init_params=None, final_report=True, keep_best=True):
  """The training loop in workdir (resuming its latest checkpoint); returns (summary, best params).

  `init_params` (a fresh run only) replace the initial parameters: a self-training round starts
  from the previous round's. `final_report`: decode the test sets greedily at the end.
  `keep_best=False`: the "best" parameters saved and returned are simply the latest ones.
  """
  t_start = time.time()
  config, c = s.config, s.config.train
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  state, state_sh = init_state(s, init_rng)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('model: %s parameters; train seq_len %d; mesh %s', f'{n_params:,}', s.seq_len,
               dict(s.mesh.shape))
  manager = checkpoint.make_manager(workdir, c.max_checkpoints)
  saved = checkpoint.saved_config(manager)
  if saved is not None:
    changed = validate.resume_changes(saved, config, state.params)
    if changed:
      logging.warning('resuming with changed settings: %s', ', '.join(
          f'{k} {v[0]!r} -> {v[1]!r}' for k, v in changed.items()))
  p_train, p_eval = compile_steps(s, state_sh)

  dataset = data.train_dataset(s.splits['train'], s.tokenizer, s.seq_len,
                               config.data.batch_size, config.seed, jax.process_index(),
                               jax.process_count(), s.layout)
  train_iter = data.make_iterator(dataset)
  val_batches = data.eval_batches(s.splits['validation'], s.tokenizer,
                                  config.data.eval_batch_size, s.layout)
  loop = {'best_val_ce': float('inf'), 'best_step': 0, 'bad_evals': 0, 'stopped': False,
          'rng': np.asarray(jax.random.key_data(step_rng)).tolist()}
  if init_params is not None:
    # A copy: the step donates the state, and the caller may still need init_params.
    state = state.replace(params=jax.tree.map(jnp.copy, jax.device_put(init_params,
                                                                        state_sh.params)))
  best_params = state.params
  restored = checkpoint.restore(manager, state, state.params)
  if restored is not None:
    step, state, best_params, data_state, loop = restored
    train_iter.set_state(data_state)
    logging.info('resumed from the checkpoint at step %d in %s', step, workdir)
  step_rng = jax.random.wrap_key_data(jnp.asarray(loop['rng'], jnp.uint32))
  best_params = jax.tree.map(jnp.copy, best_params)
  step = int(state.step)
  writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0, keep_until=step)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  config_dict = json.loads(config.to_json_best_effort())

  schedule = optim.make_schedule(config.optim, c.num_steps)
  tokens_per_step = config.data.batch_size * s.seq_len
  pending = []  # Steps not yet written: metrics are pulled to the host one step late.
  t_log, step_log, compile_s = time.time(), step, None

  def flush(upto):
    nonlocal pending, t_log, step_log
    logged = [p for p in pending if p['step'] <= upto]
    if logged:
      _log_train(writer, [p['metrics'] for p in logged], upto, step_log, t_log,
                 tokens_per_step, c.num_steps, schedule)
      pending = [p for p in pending if p['step'] > upto]
      t_log, step_log = time.time(), upto

  def save(step):
    flush(step)  # Every step up to a checkpoint is in metrics.jsonl before the checkpoint is.
    checkpoint.save(manager, step, state, best_params if keep_best else state.params,
                    train_iter.get_state(), loop, config_dict)

  def run_eval(step):
    nonlocal best_params
    val = evaluation.evaluate(p_eval, state.params, val_batches, s.mesh)
    writer.write(step, {f'val/{k}': v for k, v in val.items()})
    if val['ce'] < loop['best_val_ce']:
      loop.update(best_val_ce=val['ce'], best_step=step, bad_evals=0)
      best_params = jax.tree.map(jnp.copy, state.params)
    else:
      loop['bad_evals'] += 1
    logging.info('eval  step %d | val ce %.4f ppl %.3f acc %.4f exact %.4f | best %.4f @ %d',
                 step, val['ce'], val['perplexity'], val['accuracy'], val['exact'],
                 loop['best_val_ce'], loop['best_step'])
    if c.patience and loop['bad_evals'] >= c.patience:
      loop['stopped'] = True
      logging.info('early stop: no validation improvement in %d evaluations', c.patience)

  stopped_by = None
  while step < c.num_steps and not loop['stopped']:
    data_state = train_iter.get_state()
    batch = next(train_iter)
    batch = sharding.put_batch(s.mesh, {k: batch[k] for k in TRAIN_KEYS if k in batch})
    t0 = time.time()
    state, m = p_train(state, batch, step_rng)
    step += 1
    if compile_s is None:
      jax.block_until_ready(m)
      compile_s = time.time() - t0
      t_log, step_log = time.time(), step
    if pending:  # The previous step is done or nearly: check it while this one runs.
      prev = pending[-1]
      if int(prev['metrics']['nonfinite_streak']) >= c.max_nonfinite_steps:
        flush(prev['step'])
        raise TrainingDiverged(
            f'{c.max_nonfinite_steps} consecutive steps up to step {prev["step"]} had a '
            'non-finite loss or gradient and were skipped; the last was fed the batch at data '
            f'iterator state {prev["data"]}. Parameters are unchanged since the last good '
            f'step and the checkpoint at step {manager.latest_step()} is intact: check the '
            'data and config.optim (lr, clip_norm), then rerun to resume from it.')
      if prev['step'] % c.log_every == 0:
        flush(prev['step'])
    pending.append({'step': step, 'metrics': m, 'data': data_state})
    t_pause = time.time()  # Evaluation and checkpointing stay out of the tokens/s figure.
    if step % c.eval_every == 0 or step == c.num_steps:
      run_eval(step)
    if signals.stop_at(step):
      stopped_by = signals.received
      break
    if step % c.checkpoint_every == 0 and step < c.num_steps and not loop['stopped']:
      save(step)
    t_log += time.time() - t_pause
  flush(step)
  if manager.latest_step() != step:
    if loop['best_val_ce'] == float('inf'):
      run_eval(step)
    save(step)
  manager.wait_until_finished()
  if stopped_by:
    writer.close()
    logging.info('stopped by %s at step %d: checkpoint written; rerun the same command to '
                 'resume.', stopped_by, step)
    return {'steps': step, 'stopped_by': stopped_by}, None

  if not keep_best:
    best_params = state.params
  report = (evaluation.report_exact_match(s, best_params, config.data.eval_batch_size)
            if final_report else {})
  summary = {'steps': step, 'best_step': loop['best_step'], 'best_val_ce': loop['best_val_ce'],
             'early_stopped': loop['stopped'], 'exact_match': report,
             'compile_s': compile_s, 'wall_s': time.time() - t_start, 'parameters': n_params}
  if report:
    writer.write(step, {f'test/exact_{k}': v for k, v in report.items()})
  writer.close()
  _print_summary(summary, workdir)
  return summary, best_params


def _log_train(writer, pending, step, step_log, t_log, tokens_per_step, num_steps, schedule):
  ms = jax.device_get(pending)
  mean = {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
  mean['lr'] = float(schedule(step - 1))
  elapsed = max(time.time() - t_log, 1e-9)
  rate = (step - step_log) / elapsed
  mean['tokens_per_s'] = rate * tokens_per_step
  writer.write(step, {f'train/{k}': v for k, v in mean.items()})
  logging.info('step %5d/%d | loss %.4f ce %.4f acc %.3f F %.3f scale %.2f | lr %.2e | '
               '%s tok/s | ETA %s', step, num_steps, mean['loss'], mean['ce'], mean['accuracy'],
               mean['mean_f'], mean['feedback_scale'], mean['lr'],
               f'{mean["tokens_per_s"]:,.0f}', _fmt_time((num_steps - step) / max(rate, 1e-9)))


def _print_summary(summary, workdir):
  lines = [f"done: {summary['steps']} steps in {_fmt_time(summary['wall_s'])} "
           f"(compile {summary['compile_s'] or 0:.1f}s); best val CE "
           f"{summary['best_val_ce']:.4f} at step {summary['best_step']}"]
  if summary['exact_match']:
    lines.append('greedy exact match by operand digits (best parameters):')
    lines += [f'  {k:>3} digits: {100 * v:6.2f}%' for k, v in summary['exact_match'].items()]
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  logging.info('\n'.join(lines))
