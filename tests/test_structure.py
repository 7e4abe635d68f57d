"""The layers' promises, read from the source with ast: no import cycle between selffb's packages
(each subpackage, and each top-level module, is one node), every import of a package points down
the layer order, and no selffb module is imported inside a function (launch.py may defer its
imports so --help stays fast)."""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Bottom to top; a node may import its own layer's nodes and the layers below (docs/architecture.md).
LAYERS = (('errors', 'runtime', 'metrics', 'provenance', 'cpu'),
          ('models', 'data', 'feedback', 'optim', 'sharding', 'checkpoint', 'sampling'),
          ('train',), ('evaluators',), ('tasks',), ('assemble',), ('modes',), ('sweep',))


def node(module):
  """'selffb.train.loop' -> 'train'; 'selffb.optim' -> 'optim'; None outside selffb."""
  parts = module.split('.')
  return parts[1] if parts[0] == 'selffb' and len(parts) > 1 else None


def imports(path):
  """(module name, whether the import is inside a function) of every import in `path`; `from a
  import b` is 'a.b'."""
  tree = ast.parse(open(os.path.join(ROOT, path)).read())
  inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f) if n is not f}
  found = []
  for n in ast.walk(tree):
    if isinstance(n, ast.Import):
      found += [(a.name, id(n) in inside) for a in n.names]
    elif isinstance(n, ast.ImportFrom) and n.module:
      found += [(f'{n.module}.{a.name}', id(n) in inside) for a in n.names]
  return found


def selffb_sources():
  return sorted(os.path.relpath(p, ROOT)
                for p in glob.glob(os.path.join(ROOT, 'selffb', '**', '*.py'), recursive=True))


def graph():
  """{node: {node it imports: [the files that do]}}, module- and function-level imports alike."""
  edges = {}
  for path in selffb_sources():
    here = node(path[:-3].replace(os.sep, '.'))
    for module, _ in imports(path):
      there = node(module)
      if there is not None and there != here:
        edges.setdefault(here, {}).setdefault(there, []).append(path)
  return edges


def cycles(edges):
  """The strongly connected components of more than one node (Tarjan)."""
  index, low, stack, found = {}, {}, [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    for w in edges.get(v, {}):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return found


def test_the_scan_sees_the_packages():
  edges = graph()
  assert 'train' in edges and 'models' in edges['assemble']  # The walk reads real imports.
  assert cycles({'a': {'b': []}, 'b': {'c': []}, 'c': {'a': []}, 'd': {'a': []}}) == [
      ['a', 'b', 'c']]


def test_no_import_cycle_between_packages():
  edges = graph()
  found = cycles(edges)
  assert not found, 'import cycles: ' + '; '.join(
      ' <-> '.join(c) + ' (' + ', '.join(f'{a}->{b}: {sorted(set(edges[a][b]))}' for a in c
                                          for b in c if b in edges.get(a, {})) + ')'
      for c in found)


def test_every_package_is_in_a_layer_and_imports_only_down():
  layer = {name: i for i, names in enumerate(LAYERS) for name in names}
  edges = graph()
  nodes = set(edges) | {b for targets in edges.values() for b in targets}
  assert nodes <= set(layer), f'not in LAYERS: {sorted(nodes - set(layer))}'
  upward = [f'{a} -> {b} ({sorted(set(files))})' for a, targets in edges.items()
            for b, files in targets.items() if layer[b] > layer[a]]
  assert not upward, 'upward imports: ' + '; '.join(upward)


@pytest.mark.parametrize('path', selffb_sources())
def test_no_selffb_import_inside_a_function(path):
  hidden = [m for m, inside in imports(path) if inside and node(m) is not None]
  assert not hidden, f'{path} imports {hidden} inside a function: move the code to its layer'
