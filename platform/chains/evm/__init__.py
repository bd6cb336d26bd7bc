"""The EVM chain edge: a real Ethereum chain reached over JSON-RPC.

Read in this order:

- ``rpc``: :class:`~satchel.chains.evm.rpc.EvmRpc`, JSON-RPC over httpx on trio, typed
  results, failures sorted into the categories a circuit breaker needs (down, rate limited,
  rejected);
- ``erc20``: ERC-20 call data and Transfer logs (a deposit's on-chain identity is its
  transaction hash and log index); the committed contract artifacts;
- ``transactions``: transactions built and signed locally (eth-account), sent raw; deposit
  wallets from the custody seed;
- ``devnode``: a local development chain (`hardhat node` from npm, installed on first use);
- ``compile``: the contracts compiled offline with the pinned solc-js into ``contracts/*.json``.

Like every chain adapter this package is an edge (DESIGN §2): it never touches ledger state;
what it observes becomes transactions submitted to the sequencer. Nothing is re-exported
here, so that importing one module (e.g. ``python -m satchel.chains.evm.compile``) does not
import the others, and reading the chain never imports the signer.
"""
