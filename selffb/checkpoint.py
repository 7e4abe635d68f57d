"""Orbax checkpoints of everything a run needs to resume exactly: the train state (parameters,
optimizer state with the feedback scale's EMAs), the best parameters, the data iterator's
position, the loop's bookkeeping (early stopping, RNG) and the config that wrote them.

Saves are asynchronous and atomic (orbax writes a temporary directory and renames it). A
checkpoint that cannot be read is reported and skipped for the one before it; a workdir whose
checkpoints all fail is an error, never a silent fresh start.
"""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
  pass


def make_manager(workdir, max_to_keep):
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')),
                               options=options)


def save(manager, step, state, best_params, data_state, loop_state, config_dict):
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), best=ocp.args.StandardSave(best_params),
      data=ocp.args.JsonSave(data_state), loop=ocp.args.JsonSave(loop_state),
      config=ocp.args.JsonSave(config_dict)))


def _restore_latest(manager, args):
  """(step, restored) from the newest checkpoint that restores, or None if there is none."""
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, manager.restore(step, args=args)
    except Exception as e:  # pylint: disable=broad-except
      reason = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]
      logging.warning('checkpoint %d in %s cannot be restored (%s); trying the one before it.',
                      step, manager.directory, reason)
      failures.append(f'step {step}: {reason}')
  if failures:
    raise CheckpointError(
        f'{manager.directory} holds checkpoints but none can be restored:\n  ' +
        '\n  '.join(failures) + '\nMove that directory away to start from scratch.')
  return None


def restore(manager, abstract_state, abstract_best):
  """The newest restorable checkpoint as (step, state, best_params, data, loop), or None."""
  got = _restore_latest(manager, ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      best=ocp.args.StandardRestore(abstract_best),
      data=ocp.args.JsonRestore(), loop=ocp.args.JsonRestore()))
  if got is None:
    return None
  step, r = got
  return step, r.state, r.best, r.data, r.loop


def restore_state(manager, abstract_state):
  """(step, train state) of the newest restorable checkpoint, or None."""
  got = _restore_latest(manager, ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return None if got is None else (got[0], got[1].state)


def restore_params(manager, abstract_params):
  """The best parameters and loop state of the newest restorable checkpoint, as
  (step, params, loop), or None."""
  got = _restore_latest(manager, ocp.args.Composite(
      best=ocp.args.StandardRestore(abstract_params), loop=ocp.args.JsonRestore()))
  return None if got is None else (got[0], got[1].best, got[1].loop)


def host_params(workdir):
  """(step, best parameters) of workdir's newest restorable checkpoint as numpy arrays, whole
  on every host whatever devices wrote them (the tree and shapes from its metadata); or None."""
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')),
                                  item_handlers={'best': ocp.StandardCheckpointHandler()})
  if manager.latest_step() is None:
    return None
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype),
                        manager.item_metadata(manager.latest_step()).best)
  got = _restore_latest(manager, ocp.args.Composite(best=ocp.args.StandardRestore(target)))
  return None if got is None else (got[0], got[1].best)


def param_shapes(workdir):
  """{name: ... shape tuple} of the best parameters in workdir's newest checkpoint, read from its
  metadata (no array is read); or None without a checkpoint."""
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')),
                                  item_handlers={'best': ocp.StandardCheckpointHandler()})
  step = manager.latest_step()
  if step is None:
    return None
  return jax.tree.map(lambda m: tuple(m.shape), manager.item_metadata(step).best)


def saved_config(manager):
  """The config dict of the newest checkpoint whose config can be read, or None."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    except Exception:  # pylint: disable=broad-except
      continue  # Unreadable: the restore itself reports it and falls back.
  return None
