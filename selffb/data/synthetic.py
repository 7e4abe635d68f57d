"""Generated labelled text that runs offline: sentences with person, location and organisation
spans tagged B-/I-/O (task 'ner'), and short reviews labelled negative / neutral / positive
(task 'classify'). Both need context. The names are invented, and the validation and test
sentences use names no training sentence has, so a tagger must read an entity's type from its
context and shape ('flew to X', 'X Labs', 'Port X'), not remember names; a few contexts leave the
type open ('a letter from X arrived'). A review's label follows negation and the clause after
'but'."""
import numpy as np

TAGS = ('O', 'B-PER', 'I-PER', 'B-LOC', 'I-LOC', 'B-ORG', 'I-ORG')
SENTIMENTS = ('negative', 'neutral', 'positive')

_SYLLABLES = 'ka lo mi ra to ne su vi da re an el or is ul be go fa pe zo ti mar len dor'.split()
_TEMPLATES = (
    '{PER} works at {ORG} in {LOC} .', '{PER} flew to {LOC} on Monday .',
    '{ORG} opened an office in {LOC} .', 'yesterday {PER} met {PER} at the {ORG} office .',
    'the weather in {LOC} was cold .', '{PER} said that {ORG} will hire in {LOC} .',
    '{ORG} shares rose after {PER} spoke .', 'we visited {LOC} and {LOC} last year .',
    '{PER} joined {ORG} .', 'nobody from {ORG} came to {LOC} .', 'a letter from {ANY} arrived .',
    'flights from {LOC} to {LOC} were late .', 'the mayor of {LOC} thanked {PER} .',
    '{PER} and {PER} live near {LOC} .', 'talks between {ORG} and {ORG} ended .',
    'she wrote to {PER} about {ANY} .', '{PER} , who runs {ORG} , resigned .',
)


def _names(n=800):
  """Invented capitalised names, the same on every machine."""
  rng, out = np.random.default_rng(7), set()
  while len(out) < n:
    out.add(''.join(rng.choice(_SYLLABLES, int(rng.integers(2, 4)))).capitalize())
  return sorted(out)


NAMES = _names()
HELD_OUT = frozenset(NAMES[i] for i in range(len(NAMES)) if i % 4 == 0)  # Validation and test.


def _entity(rng, kind, names):
  """The words of one entity of `kind`, from `names`."""
  name = lambda: str(rng.choice(names))
  if kind == 'PER':
    return [name()] + ([name()] if rng.random() < 0.6 else [])
  if kind == 'LOC':
    r = rng.random()
    return ([rng.choice(['Port', 'New', 'San']), name()] if r < 0.2 else
            [name(), 'City'] if r < 0.3 else [name()])
  suffix = rng.choice(['Corp', 'Labs', 'Bank', 'Group', 'Airlines', 'Motors'])
  return [name()] + ([str(suffix)] if rng.random() < 0.8 else [])


def ner_sentence(rng, split='train'):
  """{'words': [...], 'tags': [tag ids into TAGS]} of one generated sentence (IOB2); names of
  the training split, or held-out ones for the others."""
  names = [n for n in NAMES if (n in HELD_OUT) == (split != 'train')]
  words, tags = [], []
  for part in str(rng.choice(_TEMPLATES)).split():
    if part.startswith('{'):
      kind = part[1:-1] if part != '{ANY}' else str(rng.choice(['PER', 'LOC', 'ORG']))
      span = _entity(rng, kind, names)
      words += span
      tags += [TAGS.index(f'B-{kind}')] + [TAGS.index(f'I-{kind}')] * (len(span) - 1)
    else:
      words.append(part)
      tags.append(0)
  return {'words': words, 'tags': tags}


_NOUNS = 'food service room movie book phone trip show coffee staff'.split()
_GOOD = 'good great lovely excellent fine superb'.split()
_BAD = 'bad awful terrible poor dull rude'.split()
_PLAIN = 'new long blue quiet small open'.split()


def _clause(rng):
  """(words, polarity -1/0/1) of 'the NOUN was [not] [very] ADJ'."""
  kind = rng.integers(3)
  adj = rng.choice((_BAD, _PLAIN, _GOOD)[kind])
  polarity = (-1, 0, 1)[kind]
  negated = polarity != 0 and rng.random() < 0.3
  words = ['the', rng.choice(_NOUNS), 'was'] + (['not'] if negated else []) + (
      ['very'] if rng.random() < 0.3 else []) + [adj]
  return words, -polarity if negated else polarity


def review(rng, split='train'):
  """{'text': ..., 'label': index into SENTIMENTS}: one clause, or two joined by 'but' (the
  second decides) or 'and' (the first non-neutral decides); every split draws alike."""
  del split
  words, polarity = _clause(rng)
  if rng.random() < 0.4:
    joiner = 'but' if rng.random() < 0.5 else 'and'
    more, second = _clause(rng)
    words += [joiner] + more
    polarity = second if joiner == 'but' or polarity == 0 else polarity
  return {'text': ' '.join(str(w) for w in words) + ' .', 'label': polarity + 1}


def examples(make, seed, counts, salt):
  """{split: records} with `counts` ({split: n}) records made by `make(rng, split)`. Validation
  and test are drawn together as distinct records and dealt out at random, so they follow one
  distribution; no training record equals one of them."""
  rng = np.random.default_rng([seed, salt])
  key = lambda r: repr(sorted(r.items()))

  def draw(n, split, exclude, distinct):
    made, keys, tries = [], set(), 0
    while len(made) < n:
      r, tries = make(rng, split), tries + 1
      if tries > 100 * n + 1000:
        raise ValueError(f'could not make {n} distinct {split} examples; lower '
                         'config.data.labelled.num_test / num_validation.')
      if key(r) not in exclude and not (distinct and key(r) in keys):
        made.append(r)
        keys.add(key(r))
    return made, keys

  held, keys = draw(counts['validation'] + counts['test'], 'test', set(), True)
  held = [held[i] for i in rng.permutation(len(held))]
  return {'test': held[:counts['test']], 'validation': held[counts['test']:],
          'train': draw(counts['train'], 'train', keys, False)[0]}
