"""The text input pipeline's tokens/s beside the train step's, at the same shapes.

    python bench/input_pipeline.py [--batches 40] [--steps 5] [--rounds 3] [--seq-len 256]
        [--batch 16] [--out bench/results/input_pipeline.json]

Corpus: this repository's Markdown and Python files (configs/text_lm.py's, no download). For
the byte tokenizer and a 1,024-piece SentencePiece model trained on the corpus, packed and
padded (documents: the files, or with `--paragraphs` their paragraphs), it times the pipeline
alone (configs/text_lm.py's grain pipeline: read, tokenize,
split long documents, shuffle, pack or pad, batch; `--batches` batches after a warm-up) and
selffb's compiled train step on the reference model shape (4 layers, d_model 256, learned
positions, float32; selffb/bench/common.py) at the same batch, sequence length and the
tokenizer's vocabulary, on one batch that pipeline made. Rounds interleave every measurement;
it reports medians with the min-max spread, the pipeline/step ratio (the pipeline must be over
10x the step to never starve it) and packing's share of real tokens against padding.
"""
import argparse
import statistics
import tempfile
import time

import common  # pylint: disable=g-bad-import-order
import jax
import numpy as np

from configs import text_lm
from selffb import sharding
from selffb.assemble import setup as setup_lib
from selffb.data import pipeline
from selffb.data import text
from selffb.train import state as state_lib
from selffb.train import step as step_lib


def config_for(tokenizer, pack, seq_len, batch, data_dir):
  c = text_lm.get_config('byte' if tokenizer == 'byte' else None)
  ref = common.reference_config()
  c.model = ref.model
  c.model.max_len = max(c.model.max_len, seq_len)
  c.mesh = ref.mesh
  c.data.update(seq_len=seq_len, batch_size=batch, data_dir=data_dir)
  c.data.text.pack = pack
  c.model.dropout = 0.0
  return c


class Variant:
  """One tokenizer x layout: its Setup, a pipeline iterator and a compiled step."""

  def __init__(self, tokenizer, pack, args, data_dir):
    self.name = f'{tokenizer}_{"packed" if pack else "padded"}'
    c = config_for(tokenizer, pack, args.seq_len, args.batch, data_dir)
    self.s = s = setup_lib.setup(c, data_dir, jax.devices()[:1])
    source = s.splits['train']
    if args.paragraphs:  # Short documents: where packing saves the most padding.
      source = pipeline.ListSource([p for d in source.records for p in d.split('\n\n')
                                    if p.strip()])
    self.dataset = s.task.train_dataset(source, s.tokenizer, s.seq_len, args.batch, c.seed,
                                        fmt=s.fmt)
    self.it = iter(self.dataset)
    for _ in range(3):  # Warm the prefetch threads and the first shuffle windows.
      batch = next(self.it)
    self.real_share = []
    state, state_sh = state_lib.init_state(s, jax.random.key(0))
    self.state, (self.p_train, _) = state, step_lib.compile_steps(s, state_sh)
    self.batch = sharding.put_batch(s.mesh, {k: batch[k] for k in s.task.BATCH_KEYS
                                             if k in batch})
    self.step()  # Compiles.
    self.vocab = s.tokenizer.vocab_size

  def step(self):
    self.state, m = self.p_train(self.state, self.batch, jax.random.key(1))
    return jax.block_until_ready(m)

  def time_pipeline(self, n):
    t0 = time.perf_counter()
    for _ in range(n):
      batch = next(self.it)
      self.real_share.append(float(batch['loss_mask'].mean()))
    return n * batch['inputs'].size / (time.perf_counter() - t0)

  def time_step(self, n):
    med, _ = common.timed(self.step, n, warmup=1)
    return self.batch['inputs'].size / med


def spread(xs):
  return {'median': statistics.median(xs), 'min': min(xs), 'max': max(xs)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batches', type=int, default=40, help='pipeline batches timed per round')
  ap.add_argument('--steps', type=int, default=5, help='train steps timed per round')
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--seq-len', type=int, default=256)
  ap.add_argument('--batch', type=int, default=16)
  ap.add_argument('--paragraphs', action='store_true',
                  help="documents are the corpus's paragraphs (blank-line separated), not files")
  ap.add_argument('--out', default='bench/results/input_pipeline.json')
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as data_dir:
    variants = [Variant(tok, pack, args, data_dir) for tok in ('byte', 'sentencepiece')
                for pack in (True, False)]
    pipe = {v.name: [] for v in variants}
    step = {v.name: [] for v in variants}
    for r in range(args.rounds):  # Interleaved: drift moves every measurement alike.
      for v in variants:
        pipe[v.name].append(v.time_pipeline(args.batches))
        step[v.name].append(v.time_step(args.steps))
      print(f'round {r + 1}/{args.rounds}: ' + ', '.join(
          f'{v.name} {pipe[v.name][-1]:,.0f}/{step[v.name][-1]:,.0f}' for v in variants),
            flush=True)
  rows = []
  for v in variants:
    ratios = [p / s for p, s in zip(pipe[v.name], step[v.name])]
    rows.append({'name': v.name, 'vocab': v.vocab, 'pipeline_tokens_per_s': spread(pipe[v.name]),
                 'step_tokens_per_s': spread(step[v.name]), 'pipeline_over_step': spread(ratios),
                 'real_token_share': float(np.mean(v.real_share))})
  print(f'\nbatch {args.batch} x seq_len {args.seq_len}, documents: '
        f'{"paragraphs" if args.paragraphs else "files"}; medians over {args.rounds} rounds '
        '[min, max]')
  print(f'{"variant":<22}{"vocab":>6}{"pipeline tok/s":>26}{"step tok/s":>24}{"pipeline/step":>22}'
        f'{"real tokens":>13}')
  for row in rows:
    p, s, q = row['pipeline_tokens_per_s'], row['step_tokens_per_s'], row['pipeline_over_step']
    print(f'{row["name"]:<22}{row["vocab"]:>6}'
          f'{p["median"]:>10,.0f} [{p["min"]:,.0f}, {p["max"]:,.0f}]'
          f'{s["median"]:>8,.0f} [{s["min"]:,.0f}, {s["max"]:,.0f}]'
          f'{q["median"]:>8.1f}x [{q["min"]:.1f}, {q["max"]:.1f}]'
          f'{100 * row["real_token_share"]:>12.1f}%')
  common.write_report(args.out, args=vars(args), variants=rows)


if __name__ == '__main__':
  main()
