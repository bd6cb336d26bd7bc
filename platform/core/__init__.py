"""The deterministic core: the engine, its messages, amounts, the instruction rules and error codes.

Nothing here reads a clock, randomness, the environment, files or the network
(tests/test_layers.py checks the imports): replaying the journal through it must give
the same bytes on every node.
"""
