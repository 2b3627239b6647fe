"""The top of the tree: the ``setpay`` command.

Only this package may import ``bench/``, the demo (``actors.demo``, ``actors.demo_cases``)
and the test environment (``actors.environment``); ``tests/ops/test_layers.py`` walks the
imports of every other package to prove it.
"""
