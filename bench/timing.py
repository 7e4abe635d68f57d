"""The benchmarks' timer, free of JAX so that kernels_torch.py can run it under torch alone."""
import statistics
import time


def timed(fn, reps, warmup=1):
  """(median seconds of `reps` calls after `warmup` untimed ones, the last output)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out
