"""anatomix: train, export and serve anatomy-aware medical-imaging foundation models.

The stages are top-level packages (``imaging``, ``kernels``, ``models``, ``train``, ``export``,
``serve``); this package only holds the ``anatomix`` command (:mod:`anatomix.cli`).
"""
