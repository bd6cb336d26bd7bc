// Bundle the pages' scripts into the Python package (platform/rest/static, where their
// HTML and CSS live as they are), so `pip install` needs no Node: run `npm ci && npm run
// build` here after changing anything in src/.
import { build } from "esbuild";

const out = "../platform/rest/static";
await build({
  entryPoints: ["src/app.js", "src/ops.js"],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  outdir: out,
  legalComments: "linked",
});
