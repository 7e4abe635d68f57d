"""The self-consistency score source of --mode=selftrain (`config.selftrain.weights.consistency`).

A task declares transformations under which its answer must not change (`consistency(config)`:
for addition, a + b -> b + a in the same layout). Each round, the same model answers every
prompt's views greedily, through the round's sampler path, and a candidate's value is the share
of those view answers that equal its own. The views are sampled only when the weight is > 0.
"""
import functools

from selffb import sampling
from selffb.feedback import scoring


def config_problems(config, task, weights):
  """A positive consistency weight on a task that declares no views, as a problem naming it."""
  if not weights.get('consistency'):
    return []
  hook = getattr(task, 'consistency', None)
  if hook is None or hook(config) is None:
    return [f'config.selftrain.weights.consistency > 0 but task {config.data.task!r} declares '
            'no consistency views (transformations that keep its answer); set the weight to 0 '
            'or use a task that declares them (addition: a+b and b+a).']
  return []


def greedy_answers(s, params, texts, level):
  """Each prompt text answered greedily by the model of `s` (a selftrain Setup), in order."""
  tok = s.tokenizer
  sp = sampling.SamplingParams(temperature=0.0,
                               max_new_tokens=s.task.max_answer_tokens(level, s.fmt))
  prompts = [tok.encode_prompt(t) for t in texts]
  outs = sampling.generate_batches(
      params, prompts, [s.fmt.position_ids(p, tok) for p in prompts],
      batch_size=s.config.data.eval_batch_size, model=s.model, cfg=s.model_cfg, sp=sp,
      eos_id=tok.eos_id, pad_id=tok.pad_id, mesh=s.mesh)
  return [s.task.candidate(t, lp, level, s.fmt, tok)['answer'] for t, lp in outs]


def round_scorers(s, weights, params, texts, level):
  """Per prompt, a function (candidate answers) -> consistency values, its views answered by
  `greedy_answers` in one batched call; None when the weight is 0 (no view is sampled)."""
  if not weights.get('consistency'):
    return None
  check = s.task.consistency(s.config)
  views = [check.views(t) for t in texts]
  got = iter(greedy_answers(s, params, [v for vs in views for v in vs], level))
  return [functools.partial(scoring.consistency_shares,
                            view_answers=[next(got) for _ in vs], same_answer=check.same_answer)
          for vs in views]


def summary(candidates, weights):
  """The round's mean consistency value over all its candidates, when the source is weighted."""
  if not weights.get('consistency'):
    return {}
  return {'consistency': sum(c['consistency'] for c in candidates) / len(candidates)}
