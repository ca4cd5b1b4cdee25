"""The strategy room: a knowledge base of published results and the registry's runs, the
learner that ranks development strategies for a new task, its leave-one-dataset-out
evaluation, and ``pomlia recommend``.

No torch at module level (tests/test_layers.py imports every module in a fresh interpreter and
checks). Layers and artifacts: docs/ARCHITECTURE.md.
"""
