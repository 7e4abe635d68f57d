"""Model kinds by name (`config.model.kind`). Each module follows the interface documented in
`decoder.py`; add a kind by writing such a module and naming it here (docs/extending.md)."""
from selffb.models import decoder
from selffb.models import encdec
from selffb.models import encoder
from selffb.models import lstm

MODELS = {'decoder': decoder, 'encoder': encoder, 'encdec': encdec, 'lstm': lstm}


def get(kind):
  """The model module for `config.model.kind`."""
  if kind not in MODELS:
    raise ValueError(f'config.model.kind={kind!r}; choose one of {tuple(MODELS)}.')
  return MODELS[kind]
