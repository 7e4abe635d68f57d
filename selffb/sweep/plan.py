"""A sweep from an ablation file: one entry per variant x seed, with its sub-workdir, its resolved
config and the launch.py command that runs it alone; every problem is found before anything
runs, and all of them are reported at once.

An ablation file (configs/ablations/) has `get_config(arg=None)`, a delta of configs/default.py,
and `sweep()`, which returns

    {'mode': 'train',            # or 'selftrain', 'finetune': what each entry runs
     'seeds': (0, 1, 2),         # each sets config.seed
     'control': 'ce',            # the variant the others are compared with, or None
     'variants': {'ce': {'feedback.loss': 'ce'}, 'one_minus': {...}},
     'share_round0': False}      # optional, selftrain: see below

A variant maps flat config keys to values, applied over the file's config (and any --config
overrides given to the sweep: where both set a key, the variant's value wins). Entries run seed
by seed (every variant of seed 0 first), so a sweep cut short still compares every variant.

With 'share_round0': True (mode 'selftrain', variants that set only selftrain.* keys, so round 0
is the same for all of them), each seed's first variant trains round 0 and the others start
from it (selftrain.init_workdir = <its sub-workdir>/rounds/r00): one round-0 training per seed
instead of one per entry. Those entries wait for it: here they run after it; submitted, they go
in a second wave once the first variant's jobs end.
"""
import ast
import copy
import dataclasses
import difflib
import importlib.util
import os
import re
import shlex
from typing import Any

from absl import logging

from selffb import errors
from selffb import metrics
from selffb.assemble import checks
from selffb.modes import dry_run

MODES = ('train', 'selftrain', 'finetune')
SPEC_KEYS = ('mode', 'seeds', 'control', 'variants')
OPTIONAL_KEYS = ('share_round0',)
INIT_KEY = 'selftrain.init_workdir'
LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), 'launch.py')
_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*\Z')


class SweepError(errors.InputError):
  """A sweep that cannot run; the message names every problem."""


@dataclasses.dataclass(frozen=True)
class Entry:
  index: int
  variant: str
  seed: int
  workdir: str  # <sweep workdir>/<variant>/seed_<seed>
  overrides: dict  # {flat key: value}: the sweep's --config overrides, the variant's, the seed.
  config: Any  # The resolved, locked ConfigDict.
  base: Any = None  # share_round0: the index of the entry whose round 0 this one starts from.


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str  # The ablation file's name.
  config_file: str  # As --config gave it: 'path' or 'path:arg'.
  cli_overrides: dict  # The --config.* overrides given to the sweep.
  mode: str
  control: Any  # A variant name, or None.
  variants: dict  # {name: {flat key: value}}
  seeds: tuple
  workdir: str
  entries: tuple


def load_spec(config_file):
  """The ablation file's sweep() (the file is named by --config, 'path' or 'path:arg')."""
  path = config_file.split(':', 1)[0]
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f'selffb_ablation_{name}', path)
  if spec is None:
    raise SweepError(f'--config={config_file}: an ablation file is a .py file with get_config() '
                     'and sweep() (see configs/ablations/tiny.py).')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  repeated = duplicate_keys(path)
  if repeated:
    raise SweepError(f'{path}: ' + '; '.join(repeated) + ': Python keeps only the last value of '
                     'a key a dict literal repeats, so the earlier one would never run. Rename or '
                     'remove one.')
  if not callable(getattr(module, 'sweep', None)):
    raise SweepError(f'{path} has no sweep(): an ablation file returns its variants and seeds '
                     'from sweep() (see configs/ablations/tiny.py).')
  return module.sweep()


def duplicate_keys(path):
  """Every key a dict literal of the file at `path` repeats (a variant name given twice in
  sweep(), a config key given twice in a variant), as 'line N: KEY twice': the dict Python builds
  keeps only the last, so sweep()'s value cannot show them; the file's syntax tree can."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), path)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Dict):
      seen = set()
      for key in node.keys:
        if isinstance(key, ast.Constant):
          if key.value in seen:
            found.append(f'line {key.lineno}: {key.value!r} twice in one dict')
          seen.add(key.value)
  return found


def _variant_problems(variants):
  found = []
  for name, overrides in variants.items():
    if not isinstance(name, str) or not _NAME.match(name):
      found.append(f'variant name {name!r}: letters, digits, _ . - only (it names a directory).')
    if not isinstance(overrides, dict):
      found.append(f'variant {name!r}: a dict of flat config keys to values, not '
                   f'{type(overrides).__name__}.')
    elif not all(isinstance(k, str) for k in overrides):
      found.append(f'variant {name!r}: its keys are flat config keys as strings '
                   "('feedback.loss').")
    elif 'seed' in overrides:
      found.append(f"variant {name!r} sets 'seed': the seeds come from sweep()['seeds'].")
  return found


def spec_problems(spec):
  """Problems of what sweep() returned, as messages."""
  if not isinstance(spec, dict):
    return [f'sweep() returned a {type(spec).__name__}; it returns a dict with keys {SPEC_KEYS}.']
  found = [f'sweep() has no {k!r} (its keys: {SPEC_KEYS}).' for k in SPEC_KEYS if k not in spec]
  found += [f'sweep() has an unknown key {k!r} (its keys: {SPEC_KEYS + OPTIONAL_KEYS}).'
            for k in spec if k not in SPEC_KEYS + OPTIONAL_KEYS]
  if found:
    return found
  mode, seeds, control, variants = (spec[k] for k in SPEC_KEYS)
  if mode not in MODES:
    found.append(f"sweep()['mode']={mode!r}; choose one of {MODES}.")
  if (not isinstance(seeds, (list, tuple)) or not seeds or len(set(seeds)) != len(seeds)
      or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
    found.append(f"sweep()['seeds']={seeds!r}: a non-empty list of distinct integers >= 0.")
  if not isinstance(variants, dict) or not variants:
    return found + [f"sweep()['variants']={variants!r}: a non-empty dict of named variants."]
  found += _variant_problems(variants)
  if control is not None and control not in variants:
    found.append(f"sweep()['control']={control!r} is not a variant; name one of "
                 f'{tuple(variants)}, or None.')
  return found + _share_problems(spec)


def _share_problems(spec):
  share = spec.get('share_round0', False)
  if not isinstance(share, bool):
    return [f"sweep()['share_round0']={share!r}: True or False."]
  if not share:
    return []
  if spec['mode'] != 'selftrain':
    return [f"sweep()['share_round0'] shares self-training's round 0; mode is "
            f"{spec['mode']!r}, not 'selftrain'."]
  return [f"variant {name!r} sets {key}: with share_round0 a variant sets only selftrain.* keys "
          f"(round 0 depends on the rest){' and not ' + INIT_KEY if key == INIT_KEY else ''}; "
          'give it its own sweep, or share_round0=False.'
          for name, overrides in spec['variants'].items() if isinstance(overrides, dict)
          for key in overrides
          if isinstance(key, str) and (not key.startswith('selftrain.') or key == INIT_KEY)]


def key_problems(config, variants):
  """Every override key, of every variant, that names no key of `config`, with a hint."""
  leaves = metrics.flatten(config.to_dict(), '.')
  sections = {'.'.join(k.split('.')[:i]) for k in leaves for i in range(1, k.count('.') + 1)}
  found = []
  for name, overrides in variants.items():
    for key in overrides:
      if key in sections:
        found.append(f'variant {name!r}: {key} is a section; override its keys ({key}.<key>).')
      elif key not in leaves:
        close = difflib.get_close_matches(key, list(leaves), n=1)
        hint = f' (did you mean {close[0]}?)' if close else ''
        found.append(f'variant {name!r}: {key} names no config key{hint}.')
  return found


def apply(config, overrides):
  """A copy of the locked `config` with the flat overrides set: (config, problems)."""
  c, found = copy.deepcopy(config), []
  for key, value in overrides.items():
    *path, leaf = key.split('.')
    node = c
    for part in path:
      node = node[part]
    try:
      node[leaf] = value
    except (TypeError, ValueError):
      found.append(f'{key}={value!r} is a {type(value).__name__}; the key holds a '
                   f'{type(node[leaf]).__name__}.')
  return c, found


def config_problems(mode, config, num_devices):
  """Everything `--mode={mode}` would refuse in `config`, before it writes anything."""
  return checks.problems(config, num_devices, dry_run.mode_inputs(mode))


def _raise(config_file, found):
  raise SweepError(f'the sweep in {config_file} cannot run; nothing was run or written '
                   f'({len(found)} problem(s)):\n  - ' + '\n  - '.join(found))


def _entries(config, spec, cli_overrides, workdir, num_devices):
  """(entries, problems): each variant's values and config checked on its first seed."""
  entries, found, bases = [], [], {}
  first = next(iter(spec['variants']))
  pairs = [(seed, name) for seed in spec['seeds'] for name in spec['variants']]
  for index, (seed, name) in enumerate(pairs):
    variant, base = {**spec['variants'][name], 'seed': seed}, None
    if spec.get('share_round0') and name != first:
      base = bases[seed]
      variant[INIT_KEY] = os.path.join(entries[base].workdir, 'rounds', 'r00')
    elif name == first:
      bases[seed] = index
    c, bad = apply(config, variant)
    if seed == spec['seeds'][0]:
      found += [f'variant {name!r}: {m}' for m in bad]
      if not bad and num_devices is not None:
        found += [f'variant {name!r}: {m}' for m in config_problems(spec['mode'], c, num_devices)]
    entries.append(Entry(index=index, variant=name, seed=seed,
                         workdir=os.path.join(workdir, name, f'seed_{seed}'),
                         overrides={**cli_overrides, **variant}, config=c, base=base))
  return entries, found


def build(config, config_file, cli_overrides, workdir, num_devices):
  """The sweep of the ablation file `config_file` (whose get_config() and --config overrides
  gave `config`) in `workdir`, with every entry's config checked for `num_devices` devices
  (None: only the keys and value types, for a report that runs nothing).
  Raises SweepError naming every problem of every variant; writes nothing."""
  spec = load_spec(config_file)
  found = spec_problems(spec)
  if not found:
    found = key_problems(config, spec['variants'])
  if found:
    _raise(config_file, found)
  shadowed = sorted(({k for v in spec['variants'].values() for k in v} | {'seed'}) &
                    set(cli_overrides))
  if shadowed:
    logging.warning('the variants and seeds set %s: their values win over the --config '
                    'overrides there.', ', '.join(shadowed))
  if spec.get('share_round0') and config.selftrain.init_workdir:
    _raise(config_file, [f'share_round0 trains round 0 in each seed\'s first variant, but '
                         f'config.selftrain.init_workdir={config.selftrain.init_workdir!r} '
                         'takes it from elsewhere: drop one of them.'])
  entries, found = _entries(config, spec, dict(cli_overrides), workdir, num_devices)
  if found:
    _raise(config_file, found)
  name = os.path.splitext(os.path.basename(config_file.split(':', 1)[0]))[0]
  return Sweep(name=name, config_file=config_file, cli_overrides=dict(cli_overrides),
               mode=spec['mode'], control=spec['control'], variants=spec['variants'],
               seeds=tuple(spec['seeds']), workdir=workdir, entries=tuple(entries))


def select(sw, index):
  """The entries to run: all, or entry `index` (--sweep_index)."""
  if index is None:
    return sw.entries
  n = len(sw.entries)
  if not 0 <= index < n:
    raise SweepError(f'--sweep_index={index} is out of range: the sweep {sw.name} has {n} '
                     f'entries, 0..{n - 1} (--mode=sweep_plan lists them).')
  return (sw.entries[index],)


def base_ready(entry):
  """True unless `entry` starts from another entry's round 0 (share_round0) that has not
  finished."""
  if entry.base is None:
    return True
  return os.path.exists(os.path.join(entry.config.selftrain.init_workdir, 'report.json'))


def flag_value(value):
  """A value as a --config.key= flag takes it."""
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return repr(value)


def override_flags(overrides):
  return [f'--config.{k}={flag_value(v)}' for k, v in overrides.items()]


def command(sw, entry):
  """The launch.py command that runs `entry` on its own, as a list of arguments."""
  return ['python', 'launch.py', f'--mode={sw.mode}', f'--config={sw.config_file}',
          f'--workdir={entry.workdir}', *override_flags(entry.overrides)]


def shell(args):
  return ' '.join(shlex.quote(a) for a in args)


def layout(sw):
  """What <workdir>/sweep.json holds and the report reads: entries with their sub-workdirs
  (relative to the sweep's workdir) and commands."""
  return {'name': sw.name, 'config_file': sw.config_file, 'mode': sw.mode,
          'control': sw.control, 'seeds': list(sw.seeds), 'variants': sw.variants,
          'cli_overrides': sw.cli_overrides,
          'entries': [{'index': e.index, 'variant': e.variant, 'seed': e.seed,
                       'workdir': os.path.relpath(e.workdir, sw.workdir),
                       'command': shell(command(sw, e))} for e in sw.entries]}
