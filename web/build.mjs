// Bundle the pages into the Python package (platform/rest/static), so `pip install`
// needs no Node: run `npm ci && npm run build` here after changing anything in src/.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

const out = "../platform/rest/static";
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["src/app.js", "src/ops.js"],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  outdir: out,
  legalComments: "linked",
});
for (const page of ["index.html", "ops.html", "style.css"]) copyFileSync(`src/${page}`, `${out}/${page}`);
