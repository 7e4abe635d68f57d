"""Greedy-decoding exact match: the answer the model writes with the KV-cache sampler, compared
with the record's answer."""
import fnmatch

from selffb import sampling
from selffb.data import pipeline


def greedy_exact_match(s, params, sources, batch_size):
  """{split name: share of records whose greedy continuation is the answer} for Setup `s`.

  Every batch has one shape (prompt bucket, batch size, new tokens), so the sampler compiles
  once. With an eos format an answer must end with eos; otherwise its first len(answer) tokens
  must be the answer."""
  tok, fmt = s.tokenizer, s.fmt
  records = {name: list(pipeline.read_all(src)) for name, src in sources.items()}
  prompts = {name: [tok.encode_prompt(r['prompt']) for r in rs] for name, rs in records.items()}
  positions = {name: [fmt.position_ids(p, tok) for p in ps] for name, ps in prompts.items()}
  prompt_len = sampling.bucket(max(len(p) for ps in prompts.values() for p in ps))
  sp = sampling.SamplingParams(max_new_tokens=fmt.eos + max(
      len(r['answer']) for rs in records.values() for r in rs))
  results = {}
  for name, rs in records.items():
    outs = sampling.generate_batches(
        params, prompts[name], positions[name], batch_size=batch_size, prompt_len=prompt_len,
        model=s.model, cfg=s.model_cfg, sp=sp, eos_id=tok.eos_id, pad_id=tok.pad_id,
        mesh=s.mesh)
    correct = 0
    for r, (tokens, _) in zip(rs, outs):
      answer = r['answer'].decode()
      if fmt.eos:
        correct += bool(tokens[-1] == tok.eos_id and tok.decode(tokens) == answer)
      else:
        correct += tok.decode(tokens[:len(answer)]) == answer
    results[name] = correct / len(rs)
  return results


def _label(name, pattern):
  """The part of a split name a glob's '*' matched ('test_12' under 'test_*' -> '12')."""
  head, _, tail = pattern.partition('*')
  return name[len(head):len(name) - len(tail)] if '*' in pattern else name


class Evaluator:
  """config.evals entry of type 'greedy_exact_match': {label: exact match} for the splits
  `splits` (a glob) matches, labelled by what its '*' matched, numbers in numeric order."""

  def __init__(self, spec, s):
    self.s, self.pattern = s, spec.splits
    names = fnmatch.filter(s.splits, spec.splits)
    key = lambda n: (0, int(_label(n, self.pattern))) if _label(n, self.pattern).isdigit() else (
        1, n)
    self.splits = sorted(names, key=key)

  def run(self, params):
    if not self.splits:
      return {}
    got = greedy_exact_match(self.s, params, {n: self.s.splits[n] for n in self.splits},
                             self.s.config.data.eval_batch_size)
    return {_label(n, self.pattern): got[n] for n in self.splits}

  def describe(self, result):
    if not result:
      return f'greedy exact match: no split matches {self.pattern!r}'
    return f'greedy exact match on {self.pattern}' + ''.join(
        f'\n  {k:>6}: {100 * v:6.2f}%' for k, v in result.items())
