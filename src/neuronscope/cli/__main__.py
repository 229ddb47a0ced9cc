"""``python -m neuronscope.cli``: the same as the ``neuronscope`` command."""

from neuronscope.cli import main

main()
