"""Integrations with other libraries, each an optional extra imported only on demand.

- :mod:`losskit.integrations.transformers` (``pip install 'losskit[transformers]'``): puts a
  Hugging Face causal language model's training loss on losskit's fused linear cross-entropy.

Importing :mod:`losskit` never imports these libraries.
"""
