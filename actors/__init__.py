"""The independent actors of the deterministic core (import name ``satchel.actors``).

Each module holds one actor's state and the pure functions that change it; the engine
drives them through ``satchel.core.actor`` mailboxes in block-sized batches. Nothing here
may read a clock, randomness, the environment, files or the network.
"""
