"""``python -m nngraph.cli``: the ``ngraph`` command."""
from . import entry

entry()
