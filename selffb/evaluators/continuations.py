"""Continuations of text: the first `prompt_tokens` tokens of the first `num` documents of a
split, continued under config.sample by the KV-cache sampler; what a language model has learned,
to read rather than to score."""
import numpy as np

from selffb import sampling


class Evaluator:
  """config.evals entry of type 'continuations': {'samples': [{'prompt', 'continuation'}],
  'mean_logprob'} for the split `splits` names (a task with documents: 'text'); optional keys
  `num` (4) and `prompt_tokens` (16)."""

  def __init__(self, spec, s):
    self.s, self.split = s, spec.splits
    self.num, self.prompt_tokens = spec.get('num', 4), spec.get('prompt_tokens', 16)

  def _prompts(self):
    s = self.s
    source = s.splits[self.split]
    docs = source.__getitems__(list(range(min(self.num, len(source)))))
    return [s.tokenizer.encode_prompt(d)[:self.prompt_tokens] for d in docs]

  def run(self, params):
    s = self.s
    if self.split not in s.splits:
      return {}
    prompts = self._prompts()
    sp = sampling.SamplingParams.from_config(s.config.sample)
    s.model.check_decode(s.model_cfg, max(len(p) for p in prompts), sp.max_new_tokens)
    outs = sampling.generate(params, prompts, model=s.model, cfg=s.model_cfg, sp=sp,
                             eos_id=s.tokenizer.eos_id, pad_id=s.tokenizer.pad_id,
                             seed=s.config.sample.seed, mesh=s.mesh,
                             positions=[np.arange(len(p), dtype=np.int32) for p in prompts])
    samples = [{'prompt': s.tokenizer.decode(p), 'continuation': s.tokenizer.decode(tokens)}
               for p, (tokens, _) in zip(prompts, outs)]
    return {'samples': samples,
            'mean_logprob': float(np.mean([np.mean(lp) for _, lp in outs]))}

  def describe(self, result):
    if not result:
      return f'continuations: no split {self.split!r}'
    return (f'continuations of {self.split} documents (mean logprob '
            f"{result['mean_logprob']:.3f}):" + ''.join(
                f"\n  {r['prompt']!r} -> {r['continuation']!r}" for r in result['samples']))
