"""--mode=train: train (resuming), then run config.evals on the best parameters and report."""
import functools
import os

import jax
from absl import logging

from selffb import evaluators
from selffb import metrics as metrics_lib
from selffb import provenance
from selffb import runtime
from selffb import tasks
from selffb.assemble import init_from
from selffb.assemble import setup as setup_lib
from selffb.train import loop


def inputs(config):
  """--mode=train's own check, as (problems, nothing built)."""
  if getattr(tasks.get(config.data.task), 'SUPPORTS_FINETUNE', False):
    return [f'config.data.task={config.data.task!r} trains with --mode=finetune, which computes '
            'its preference reference first.'], None
  return [], None


def train_and_evaluate(config, workdir):
  """Trains in workdir (resuming from its latest checkpoint), evaluates, reports; returns the
  summary. Process 0 holds a lock on workdir for the whole run (hosts share the workdir).
  summary.json, written last, marks a finished run."""
  # Fails on a bad config before anything is written.
  s = setup_lib.setup(config, workdir, mode_inputs=inputs)
  with runtime.locked(workdir), runtime.StopSignals() as signals:
    provenance.record(workdir)
    init = functools.partial(init_from.start_params, s) if config.model.init_from else None
    summary, best_params = loop.train_loop(s, workdir, signals, init_params=init)
    if 'stopped_by' in summary:
      return summary
    evals = evaluators.build(config.evals, s)
    results = evaluators.run(evals, best_params)
    summary.update(results)
    flat = {k: v for k, v in metrics_lib.flatten(results).items()  # Scalars (not samples).
            if isinstance(v, (int, float))}
    if flat:
      writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0,
                                        keep_until=summary['steps'])
      writer.write(summary['steps'], flat)
      writer.close()
    report(summary, {name: evals[name].describe(r) for name, r in results.items()})
    runtime.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary


def report(summary, described):
  """Logs the run's summary line and each evaluator's lines."""
  picked = [k for k in summary if k.startswith('best_val_') and k != 'best_val_ce']
  best = (f"best val {picked[0][len('best_val_'):]} {summary[picked[0]]:.4f} (val CE "
          f"{summary['best_val_ce']:.4f})" if picked else
          f"best val CE {summary['best_val_ce']:.4f}")
  lines = [f"done: {summary['steps']} steps in {loop.fmt_time(summary['wall_s'])} "
           f"(compile {summary['compile_s'] or 0:.1f}s); {best} at step {summary['best_step']}"]
  for name, text in described.items():
    lines.append(f'{name} (best parameters): {text}')
  logging.info('\n'.join(lines))
