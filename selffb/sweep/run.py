"""--mode=sweep, sweep_plan and sweep_report.

`sweep` runs every entry (or --sweep_index's) that is not finished, each as a plain train or
selftrain run in its sub-workdir, so an interrupted one resumes from its checkpoint: here one
after another (--sweep_executor=local), or as one submitit job per entry on SLURM (`slurm`,
settings from config.slurm) or as local processes (`submitit_local`). A job runs the entry's
`launch.py --mode=sweep --sweep_index=i` command, so it also skips a finished entry and
rebuilds the report after its run. The report (aggregate.py) is rebuilt after each entry.
"""
import importlib.util
import json
import os
import shutil
import sys
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

from selffb import runtime
from selffb.assemble import resume
from selffb.modes import finetune as finetune_mode
from selffb.modes import run_config
from selffb.modes import selftrain
from selffb.modes import train as train_mode
from selffb.sweep import aggregate
from selffb.sweep import plan
from selffb.train import loop

EXECUTORS = ('local', 'slurm', 'submitit_local')
POLL_S = 5.0  # Seconds between looks at the submitted jobs.


def _devices(config, executor):
  """The devices an entry's run will see, for the mesh checks."""
  if executor == 'local':
    return jax.device_count()
  return config.slurm.nodes * max(config.slurm.gpus_per_node, 1)


def _executor_problems(sw, executor):
  found = []
  for e in sw.entries:
    s = e.config.slurm
    found += [f"variant {e.variant!r}: config.slurm.extra entry {x!r} is not 'name=value'."
              for x in s.extra if '=' not in x]
    if executor == 'submitit_local' and s.nodes != 1:
      found.append(f'variant {e.variant!r}: --sweep_executor=submitit_local runs its jobs on '
                   f'this machine; config.slurm.nodes={s.nodes} must be 1.')
  return sorted(set(found))


def prepare(config, config_file, cli_overrides, workdir, index, executor):
  """The checked sweep and the entries to run; raises SweepError before anything is written."""
  if executor not in EXECUTORS:
    raise plan.SweepError(f'--sweep_executor={executor!r}; choose one of {EXECUTORS}.')
  if runtime.workdir_problem(workdir):
    raise plan.SweepError(runtime.workdir_problem(workdir))
  sw = plan.build(config, config_file, cli_overrides, workdir, _devices(config, executor))
  entries = plan.select(sw, index)
  if executor != 'local':
    found = _executor_problems(sw, executor)
    if found:
      raise plan.SweepError('the sweep cannot be submitted:\n  - ' + '\n  - '.join(found))
  return sw, entries


def changed_problems(sw):
  """A message naming the keys where a finished entry's run had other values than the sweep
  gives it now (the executor's config.slurm aside), or None: skipping it would report its
  results as the new settings'. A plain resume refuses the same change."""
  changed, where = {}, {}
  for e in sw.entries:
    if not aggregate.finished(e.workdir):
      continue
    for key, values in resume.config_changes(run_config.saved(e.workdir), e.config).items():
      if not key.startswith('slurm.') and not (key == plan.INIT_KEY and e.base is not None):
        changed.setdefault(key, values)
        where.setdefault(key, os.path.relpath(e.workdir, sw.workdir))
  if not changed:
    return None
  return (f'finished runs in {sw.workdir} ran with other settings than this sweep gives: ' +
          ', '.join(f'{k} {v[0]!r} (run, e.g. {where[k]}) vs {v[1]!r}'
                    for k, v in changed.items()) +
          '; skipping them would report their results as these settings\'. Use a new --workdir '
          'for the new settings, or restore those values.')


class _Progress:
  """The sweep-level line of each entry: i/N, variant, seed, what happened, elapsed, ETA (from
  the entries run so far in this session, for those still to run)."""

  def __init__(self, sw, entries):
    self.n, self.t0, self.ran = len(sw.entries), time.time(), 0
    self.left = sum(not aggregate.finished(e.workdir) for e in entries)

  def line(self, entry, what, ran):
    """Logs entry's line; `ran`: 1 if it ran to the end here (it counts for the ETA)."""
    self.ran += ran
    self.left -= 0 if what.startswith('skipped') else 1
    elapsed = time.time() - self.t0
    eta = loop.fmt_time(elapsed / self.ran * self.left) if self.ran else '-'
    logging.info('sweep %d/%d | %s seed %d | %s | elapsed %s | ETA %s (%d to run)',
                 entry.index + 1, self.n, entry.variant, entry.seed, what,
                 loop.fmt_time(elapsed), eta, self.left)
    return {'index': entry.index, 'variant': entry.variant, 'seed': entry.seed,
            'status': what.split(' ')[0]}


def _run_entry(mode, entry):
  """Runs one entry here; False when a signal stopped it (its checkpoint is written)."""
  if mode == 'train':
    return 'stopped_by' not in train_mode.train_and_evaluate(entry.config, entry.workdir)
  if mode == 'finetune':
    return 'stopped_by' not in finetune_mode.finetune(entry.config, entry.workdir)
  return selftrain.run_selftrain(entry.config, entry.workdir) is not None


def _run_here(sw, entries):
  """The entries one after another in this process; returns their statuses. A run that
  diverges is a result of its arm, not a reason to stop the others: it is reported at the end."""
  progress, out, diverged, waiting = _Progress(sw, entries), [], [], []
  for e in entries:
    if jax.process_count() > 1:  # Every host decides what is finished from the same files.
      multihost_utils.sync_global_devices(f'sweep entry {e.index}')
    if aggregate.finished(e.workdir):
      out.append(progress.line(e, 'skipped (finished)', 0))
      continue
    if not plan.base_ready(e):
      waiting.append(f'{e.index} ({e.variant} seed {e.seed}: needs entry {e.base})')
      out.append(progress.line(e, f'waiting (round 0 of entry {e.base} has not finished)', 0))
      continue
    logging.info('sweep %d/%d: %s seed %d in %s', e.index + 1, len(sw.entries), e.variant,
                 e.seed, e.workdir)
    t0 = time.time()
    try:
      if not _run_entry(sw.mode, e):
        logging.info('sweep stopped in entry %d; rerun the same command to resume it.', e.index)
        out.append(progress.line(e, 'stopped', 0))
        return out
    except loop.TrainingDiverged as error:
      logging.error('sweep entry %d (%s seed %d) diverged: %s', e.index, e.variant, e.seed, error)
      diverged.append(f'{e.index} ({e.variant} seed {e.seed})')
      out.append(progress.line(e, 'failed (diverged)', 0))
      continue
    aggregate.write(plan.layout(sw), sw.workdir)
    out.append(progress.line(e, f'done in {loop.fmt_time(time.time() - t0)}', 1))
  if diverged or waiting:
    aggregate.write(plan.layout(sw), sw.workdir)
  if diverged:
    raise plan.SweepError(f'entries {", ".join(diverged)} diverged (their lines above say '
                          'where); the others ran. A rerun retries them from their checkpoints.')
  if waiting:
    raise plan.SweepError(f'entries {", ".join(waiting)} start from another entry\'s round 0 '
                          '(share_round0), which has not finished: run that entry first '
                          '(--sweep_index), then these.')
  return out


def job_command(sw, entry):
  """What a job runs: the entry through the sweep, with absolute paths."""
  path, sep, arg = sw.config_file.partition(':')
  cmd = [sys.executable, plan.LAUNCH, '--mode=sweep',
         f'--config={os.path.abspath(path)}{sep}{arg}',
         f'--workdir={os.path.abspath(sw.workdir)}', f'--sweep_index={entry.index}',
         *plan.override_flags(sw.cli_overrides)]
  return cmd + (['--multihost'] if entry.config.slurm.nodes > 1 else [])


def executor_parameters(s, name):
  """submitit's parameters from config.slurm `s` (slurm_* ones only reach sbatch)."""
  p = {'name': name, 'timeout_min': s.timeout_min, 'nodes': s.nodes, 'tasks_per_node': 1,
       'gpus_per_node': s.gpus_per_node, 'cpus_per_task': s.cpus_per_task,
       'slurm_array_parallelism': s.array_parallelism, 'slurm_setup': list(s.setup),
       'slurm_additional_parameters': dict(x.split('=', 1) for x in s.extra)}
  if s.mem_gb:
    p['mem_gb'] = s.mem_gb
  for key in ('partition', 'account', 'qos', 'constraint'):
    if s[key]:
      p[f'slurm_{key}'] = s[key]
  return p


def _check_available(executor):
  """submitit, and for slurm a SLURM client, before anything is written."""
  if importlib.util.find_spec('submitit') is None:
    raise plan.SweepError(f'--sweep_executor={executor} needs submitit: pip install submitit.')
  if executor == 'slurm' and shutil.which('srun') is None:
    raise plan.SweepError('--sweep_executor=slurm: no srun here, so no SLURM cluster to submit '
                          'to (--sweep_executor=submitit_local runs the same jobs here).')


def make_executor(folder, executor):
  import submitit  # pylint: disable=g-import-not-at-top
  return submitit.AutoExecutor(folder=folder,
                               cluster='local' if executor == 'submitit_local' else 'slurm')


def _submit(sw, entries, executor):
  """One job per entry, a job array per distinct config.slurm; returns [(entry, job)]."""
  from submitit import helpers  # pylint: disable=g-import-not-at-top
  ex, jobs, groups = make_executor(os.path.join(sw.workdir, 'submitit'), executor), [], {}
  for e in entries:
    params = executor_parameters(e.config.slurm, f'selffb-{sw.name}')
    groups.setdefault(json.dumps(params, sort_keys=True), []).append(e)
  for params, group in groups.items():
    ex.update_parameters(**json.loads(params))
    with ex.batch():
      submitted = [ex.submit(helpers.CommandFunction(job_command(sw, e), cwd=os.getcwd()))
                   for e in group]
    jobs += list(zip(group, submitted))
  for e, job in jobs:
    logging.info('sweep %d/%d: %s seed %d submitted as job %s', e.index + 1, len(sw.entries),
                 e.variant, e.seed, job.job_id)
  return jobs


def _run_jobs(sw, entries, executor):
  """Submits the unfinished entries and waits for their jobs; returns their statuses."""
  progress, out = _Progress(sw, entries), []
  for e in entries:
    if aggregate.finished(e.workdir):
      out.append(progress.line(e, 'skipped (finished)', 0))
  todo = [e for e in entries if not aggregate.finished(e.workdir)]
  first = [e for e in todo if plan.base_ready(e)]
  failed = _wait(_submit(sw, first, executor) if first else [], progress, out)
  # share_round0: the entries that start from a round 0 trained in the first wave.
  second = [e for e in todo if e not in first and plan.base_ready(e)]
  failed += _wait(_submit(sw, second, executor) if second else [], progress, out)
  failed += [f'{e.variant} seed {e.seed} (not submitted: round 0 of entry {e.base} did not '
             'finish)' for e in todo if e not in first and e not in second]
  aggregate.write(plan.layout(sw), sw.workdir)
  if failed:
    raise plan.SweepError(f'{len(failed)} job(s) failed: ' + '; '.join(failed) + '. Rerun the '
                          'sweep to run them again: finished entries are skipped.')
  return out


def _wait(waiting, progress, out):
  """Waits for the submitted [(entry, job)]; appends their statuses; returns the failures."""
  failed = []
  while waiting:
    time.sleep(POLL_S)
    for e, job in [w for w in waiting if w[1].done()]:
      waiting.remove((e, job))
      try:
        job.result()
      except Exception:  # pylint: disable=broad-except  # Any failure: its log says why.
        failed.append(f'{e.variant} seed {e.seed} (job {job.job_id}, log {job.paths.stderr})')
        out.append(progress.line(e, f'failed (job {job.job_id})', 0))
        continue
      if aggregate.finished(e.workdir):
        out.append(progress.line(e, f'done (job {job.job_id})', 1))
      else:  # A signal (e.g. the time limit) stopped it after a checkpoint: rerun to resume.
        out.append(progress.line(e, f'stopped (job {job.job_id})', 0))
  return failed


def run_sweep(config, config_file, cli_overrides, workdir, index=None, executor='local'):
  """--mode=sweep: runs (or submits) the unfinished entries, then the report; returns each
  entry's status: 'skipped', 'done', 'stopped' or 'failed'."""
  sw, entries = prepare(config, config_file, cli_overrides, workdir, index, executor)
  changed = changed_problems(sw)
  if changed:
    raise plan.SweepError(changed)
  if executor != 'local':
    _check_available(executor)
  runtime.write_json(os.path.join(workdir, 'sweep.json'), plan.layout(sw))
  if executor != 'local':
    return _run_jobs(sw, entries, executor)
  out = _run_here(sw, entries)
  if not any(r['status'] == 'done' for r in out):  # Else the last entry wrote it.
    aggregate.write(plan.layout(sw), workdir)
  logging.info('sweep report: %s', os.path.join(workdir, 'results.md'))
  return out


def print_plan(config, config_file, cli_overrides, workdir, index=None, executor='local'):
  """--mode=sweep_plan: prints each entry, its state and the command that runs it alone;
  writes nothing. Returns the commands."""
  sw, entries = prepare(config, config_file, cli_overrides, workdir, index, executor)
  print(f'sweep {sw.name} ({sw.config_file}): --mode={sw.mode}, {len(sw.variants)} variants x '
        f'{len(sw.seeds)} seeds = {len(sw.entries)} entries, control {sw.control!r}, in '
        f'{workdir}')
  commands = []
  for e in entries:
    state = ('finished' if aggregate.finished(e.workdir) else
             'unfinished' if os.path.isdir(e.workdir) else 'not started')
    commands.append(plan.shell(plan.command(sw, e)))
    print(f'{e.index:3d}  {e.variant}  seed {e.seed}  {state}\n     {commands[-1]}')
  print('one entry through the sweep (a job array task; skipped when finished, then the '
        'report): ' + plan.shell(['python', 'launch.py', '--mode=sweep',
                                  f'--config={sw.config_file}', f'--workdir={workdir}',
                                  *plan.override_flags(sw.cli_overrides)]) + ' --sweep_index=$I')
  if executor != 'local':
    print(f'submitit ({executor}) parameters of the first entry: '
          f'{executor_parameters(entries[0].config.slurm, "selffb-" + sw.name)}')
  return commands


def report(config, config_file, cli_overrides, workdir):
  """--mode=sweep_report: rebuilds the report from the sub-workdirs (the sweep's layout from
  workdir/sweep.json, or from --config when given); prints and returns results.md."""
  if config is not None:
    # No device checks: a report runs nothing, e.g. on a login node for a GPU sweep.
    layout = plan.layout(plan.build(config, config_file, cli_overrides, workdir, None))
  else:
    path = os.path.join(workdir, 'sweep.json')
    if not os.path.exists(path):
      raise plan.SweepError(f'{workdir} holds no sweep (no sweep.json): check the path, or give '
                            "the sweep's --config.")
    with open(path) as f:
      layout = json.load(f)
  text = aggregate.write(layout, workdir)
  print(text)
  return text
