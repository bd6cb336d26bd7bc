// Offline Solidity compilation with the pinned solc-js: Standard JSON input on stdin,
// {"version": ..., "output": <Standard JSON output>} on stdout. Driven by satchel/chains/evm/compile.py.
const solc = require("solc");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const output = JSON.parse(solc.compile(input));
  process.stdout.write(JSON.stringify({ version: solc.version(), output }));
});
