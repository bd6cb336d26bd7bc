"""The ledger's ordering and storage: the sequencer, the journal, snapshots, the chain
of blocks and the block stream to validators.
"""
