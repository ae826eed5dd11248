// Writes the licence of every npm package that esbuild put into the bundle (from its
// metafile), so the wheel carries the notices the MIT licence asks for.
import { readFileSync, writeFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

const [metafile, output] = process.argv.slice(2);
const meta = JSON.parse(readFileSync(metafile, "utf8"));
const packages = new Set();
const [bundle] = Object.values(meta.outputs).filter((o) => o.entryPoint);
for (const input of Object.keys(bundle.inputs)) {
  const match = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (match) packages.add(match[1]);
}
let text = "Third-party software bundled into editor.js (built by scripts/editor/build.sh)\n";
for (const name of [...packages].sort()) {
  const dir = join("node_modules", name);
  const info = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  const file = readdirSync(dir).find((f) => /^(licen[cs]e|copying)/i.test(f));
  if (!file) throw new Error(`${name} ships no licence file: check its terms before bundling it`);
  text += `\n${"=".repeat(78)}\n${name} ${info.version} (${info.license})\n${"=".repeat(78)}\n`;
  text += readFileSync(join(dir, file), "utf8").trim() + "\n";
}
writeFileSync(output, text);
console.log(`${packages.size} packages: ${[...packages].sort().join(", ")}`);
