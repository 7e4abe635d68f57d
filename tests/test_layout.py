"""The layout's promises, read from the source: generic modules reach model kinds and tasks only
through the registries, and no module or function grows past what a reader can hold in mind."""
import ast
import glob
import os

import pytest

from selffb import models
from selffb import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERIC = ('selffb/assemble/', 'selffb/train/', 'selffb/evaluators/', 'selffb/modes/',
           'selffb/sampling.py', 'selffb/sweep/', 'launch.py')
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def sources():
  paths = glob.glob(os.path.join(ROOT, 'selffb', '**', '*.py'), recursive=True)
  return sorted(os.path.relpath(p, ROOT) for p in paths) + ['launch.py']


def imported(path):
  """Every module name `path` imports, with `from a import b` as 'a.b'."""
  names = set()
  for node in ast.walk(ast.parse(open(os.path.join(ROOT, path)).read())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.update(f'{node.module}.{a.name}' for a in node.names)
  return names


def concrete_modules():
  """'selffb.models.decoder', 'selffb.tasks.addition', ...: every module of the two packages."""
  found = set()
  for package in ('models', 'tasks'):
    for path in glob.glob(os.path.join(ROOT, 'selffb', package, '*.py')):
      name = os.path.basename(path)[:-3]
      if name != '__init__':
        found.add(f'selffb.{package}.{name}')
  return found


def test_the_registries_name_every_kind_and_task():
  assert {m.__name__ for m in models.MODELS.values()} <= concrete_modules()
  assert {t.__name__ for t in tasks.TASKS.values()} <= concrete_modules()
  assert 'selffb.models.decoder' in concrete_modules()  # The scan itself finds modules.


@pytest.mark.parametrize('path', [p for p in sources() if p.startswith(GENERIC)])
def test_generic_modules_import_no_model_or_task_by_name(path):
  named = imported(path) & concrete_modules()
  assert not named, f'{path} imports {sorted(named)}; use selffb.models / selffb.tasks.get()'


def body_lines(node):
  """A function's lines, its docstring left out."""
  body = node.body
  if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
    body = body[1:] or body
  return node.end_lineno - body[0].lineno + 1


@pytest.mark.parametrize('path', sources())
def test_modules_and_functions_stay_small(path):
  text = open(os.path.join(ROOT, path)).read()
  assert len(text.splitlines()) <= MAX_MODULE_LINES, path
  long = [(node.name, body_lines(node)) for node in ast.walk(ast.parse(text))
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and body_lines(node) > MAX_FUNCTION_LINES]
  assert not long, f'{path}: functions over {MAX_FUNCTION_LINES} lines: {long}'
