// Validate custom resources (Argo CD, KEDA, External Secrets) against the
// schemas generated from their projects' CRDs, shipped by the npm packages
// @kubernetes-models/{argo-cd,keda,external-secrets} (see npm/package.json).
//
// Usage: node crd_validate.mjs TOOLS_DIR < objects.json
//   objects.json: a JSON array of Kubernetes objects.
// Prints a JSON array with one {id, ok, errors} per object. Exit 0 when every
// object validated, 1 when any did not (or had no schema), 2 on usage error.
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

// API group -> npm package (under @kubernetes-models/). A group not listed
// here has no schema and is reported as a failure, never skipped.
const PACKAGES = {
  "argoproj.io": "argo-cd",
  "keda.sh": "keda",
  "external-secrets.io": "external-secrets",
};

const toolsDir = process.argv[2];
if (!toolsDir) {
  console.error("usage: node crd_validate.mjs TOOLS_DIR < objects.json");
  process.exit(2);
}
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const id = `${obj.apiVersion}/${obj.kind}/${obj.metadata?.name}`;
  const [group, version] = String(obj.apiVersion).split("/");
  const pkg = PACKAGES[group];
  const file = pkg && version
    ? join(toolsDir, "node_modules", "@kubernetes-models", pkg, group, version, `${obj.kind}.js`)
    : null;
  if (!file || !existsSync(file)) {
    results.push({ id, ok: false, errors: [`no schema for ${obj.apiVersion} ${obj.kind}`] });
    continue;
  }
  const mod = await import(pathToFileURL(file).href);
  const Model = mod[obj.kind];
  try {
    // The model class validates with the CRD's OpenAPI schema (ajv).
    new Model(obj).validate();
    results.push({ id, ok: true, errors: [] });
  } catch (err) {
    const details = (err.errors || []).map(
      (e) => `${e.instancePath || "/"} ${e.message}${e.params ? " " + JSON.stringify(e.params) : ""}`,
    );
    results.push({ id, ok: false, errors: details.length ? details : [String(err)] });
  }
}
console.log(JSON.stringify(results, null, 1));
process.exit(results.every((r) => r.ok) ? 0 : 1);
