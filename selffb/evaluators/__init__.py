"""Evaluators by type, declared in `config.evals` (a name per entry, with its `type` and the
`splits` glob it reads); each is built from (entry, Setup) and has `run(params) -> metrics`."""
from selffb.evaluators import continuations
from selffb.evaluators import greedy
from selffb.evaluators import labelling
from selffb.evaluators import teacher_forced

EVALUATORS = {'greedy_exact_match': greedy.Evaluator, 'teacher_forced': teacher_forced.Evaluator,
              'continuations': continuations.Evaluator, 'report': labelling.Evaluator}


def problems(evals):
  """Problems of config.evals."""
  found = [f"config.evals.{name}.type={spec.type!r}; choose one of {tuple(EVALUATORS)}."
           for name, spec in evals.items() if spec.type not in EVALUATORS]
  for name, spec in evals.items():
    if spec.type == 'continuations':
      found += [f'config.evals.{name}.{key}={spec.get(key)!r} must be an integer >= 1.'
                for key in ('num', 'prompt_tokens')
                if not isinstance(spec.get(key, 1), int) or spec.get(key, 1) < 1]
  return found


def build(evals, s):
  """{name: evaluator} for config.evals."""
  return {name: EVALUATORS[spec.type](spec, s) for name, spec in evals.items()}


def run(evaluators, params):
  """{name: metrics} of every evaluator on `params`."""
  return {name: e.run(params) for name, e in evaluators.items()}
