// The dev node's chain, for `hardhat node` run by satchel.chains.evm.devnode (which sets the
// SATCHEL_EVM_* variables; the defaults here are the same). Nothing is compiled by hardhat:
// contracts are compiled offline by compile.js and committed as artifacts.
const env = process.env;
const blockTimeMs = Number(env.SATCHEL_EVM_BLOCK_TIME_MS || "0");

module.exports = {
  networks: {
    hardhat: {
      chainId: Number(env.SATCHEL_EVM_CHAIN_ID || "31337"),
      // pinned so that the node's rules match the compiler's evmVersion (satchel/chains/evm/compile.py)
      hardfork: "cancun",
      accounts: {
        mnemonic: env.SATCHEL_EVM_MNEMONIC || "test test test test test test test test test test test junk",
        count: Number(env.SATCHEL_EVM_ACCOUNTS || "10"),
      },
      // 0: a block per transaction (automine); > 0: a block every that many ms, transactions wait in the mempool
      mining: blockTimeMs > 0 ? { auto: false, interval: blockTimeMs } : { auto: true, interval: 0 },
    },
  },
};
