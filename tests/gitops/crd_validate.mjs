// Validate custom resources against the schemas generated from their
// projects' CRDs, shipped by the npm packages @kubernetes-models/* (see
// npm/package.json, whose upstreamVersions names the release each package was
// generated from; the platform Applications pin exactly those releases).
//
// The Barman Cloud plugin's ObjectStore has no package of its own: its
// spec.configuration is the barman-cloud library's BarmanObjectStoreConfiguration,
// the same version (v0.5.0) that @kubernetes-models/cloudnative-pg carries
// for CloudNativePG 1.29.0 and that plugin v0.12.0 is built with; the few other
// fields of ObjectStoreSpec (plugin v0.12.0, api/v1/objectstore_types.go) are
// declared below (OBJECTSTORE_TS, checkObjectStore).
//
// Two checks per object:
// 1. the CRD's OpenAPI schema (types, enums, required fields), compiled to an
//    ajv validator inside each model class;
// 2. unknown fields: CRD schemas allow extra properties, and the API server
//    silently prunes them, so a misspelt field (selfheal: true) would pass
//    (1) and do nothing. The packages' TypeScript declarations list every
//    known field; assigning each object as a literal to its declared type
//    makes the TypeScript compiler reject any field the CRD does not have.
//
// Usage: node crd_validate.mjs TOOLS_DIR < objects.json
//   objects.json: a JSON array of Kubernetes objects.
// Prints a JSON array with one {id, ok, errors} per object. Exit 0 when every
// object validated, 1 when any did not (or had no schema), 2 on usage error.
import { readFileSync, existsSync, mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

// API group -> npm package (under @kubernetes-models/). A group not listed
// here has no schema and is reported as a failure, never skipped.
const PACKAGES = {
  "argoproj.io": "argo-cd",
  "keda.sh": "keda",
  "external-secrets.io": "external-secrets",
  "postgresql.cnpg.io": "cloudnative-pg",
  "monitoring.coreos.com": "prometheus-operator",
  "cert-manager.io": "cert-manager",
  "gateway.networking.k8s.io": "gateway-api",
};
const BARMAN_CONFIG = ["cloudnative-pg", "github.com", "cloudnative-pg", "barman-cloud", "pkg", "api", "BarmanObjectStoreConfiguration.js"];
// ObjectStoreSpec of plugin-barman-cloud v0.12.0 around the library type.
const OBJECTSTORE_TS = (configFile) => `
import type { IBarmanObjectStoreConfiguration } from ${JSON.stringify(configFile)};
interface ObjectStoreMeta { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
interface ObjectStoreSidecar {
  env?: { name: string; value?: string; valueFrom?: object }[];
  retentionPolicyIntervalSeconds?: number;
  resources?: { limits?: Record<string, string>; requests?: Record<string, string> };
  additionalContainerArgs?: string[];
  logLevel?: "error" | "warning" | "info" | "debug" | "trace";
}
interface ObjectStore {
  apiVersion: "barmancloud.cnpg.io/v1";
  kind: "ObjectStore";
  metadata: ObjectStoreMeta;
  spec: { configuration: IBarmanObjectStoreConfiguration; retentionPolicy?: string; instanceSidecarConfiguration?: ObjectStoreSidecar };
}
`;

const toolsDir = process.argv[2] && resolve(process.argv[2]);
if (!toolsDir) {
  console.error("usage: node crd_validate.mjs TOOLS_DIR < objects.json");
  process.exit(2);
}
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
const tsLines = [];
const tsLineOwner = new Map(); // line number (0-based) -> index in results
let objectStoreTsDone = false;
for (const obj of objects) {
  const id = `${obj.apiVersion}/${obj.kind}/${obj.metadata?.name}`;
  const [group, version] = String(obj.apiVersion).split("/");
  if (obj.apiVersion === "barmancloud.cnpg.io/v1" && obj.kind === "ObjectStore") {
    const configFile = join(toolsDir, "node_modules", "@kubernetes-models", ...BARMAN_CONFIG);
    if (!objectStoreTsDone) {
      tsLines.push(...OBJECTSTORE_TS(configFile).split("\n"));
      objectStoreTsDone = true;
    }
    tsLineOwner.set(tsLines.length, results.length);
    tsLines.push(`export const doc${results.length}: ObjectStore = ${JSON.stringify(obj)};`);
    const { BarmanObjectStoreConfiguration } = await import(pathToFileURL(configFile).href);
    const errors = [];
    const retention = obj.spec?.retentionPolicy;
    if (retention !== undefined && !/^[1-9][0-9]*[dwm]$/.test(retention)) {
      errors.push(`/spec/retentionPolicy must match ^[1-9][0-9]*[dwm]$`);
    }
    if (obj.spec?.configuration?.serverName !== undefined) {
      errors.push("/spec/configuration/serverName is forbidden (a plugin parameter of the Cluster)");
    }
    try {
      new BarmanObjectStoreConfiguration(obj.spec?.configuration).validate();
    } catch (err) {
      errors.push(...(err.errors || [err]).map((e) => `/spec/configuration${e.instancePath || ""} ${e.message || e}`));
    }
    results.push({ id, ok: errors.length === 0, errors });
    continue;
  }
  const pkg = PACKAGES[group];
  const file = pkg && version
    ? join(toolsDir, "node_modules", "@kubernetes-models", pkg, group, version, `${obj.kind}.js`)
    : null;
  if (!file || !existsSync(file)) {
    results.push({ id, ok: false, errors: [`no schema for ${obj.apiVersion} ${obj.kind}`] });
    continue;
  }
  tsLineOwner.set(tsLines.length + 1, results.length);
  tsLines.push(`import type { I${obj.kind} as T${results.length} } from ${JSON.stringify(file)};`);
  tsLines.push(`export const doc${results.length}: T${results.length} = ${JSON.stringify(obj)};`);
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
if (tsLines.length) {
  const ts = (await import(pathToFileURL(join(toolsDir, "node_modules", "typescript", "lib", "typescript.js")).href)).default;
  const dir = mkdtempSync(join(toolsDir, "tscheck-"));
  try {
    const file = join(dir, "check.ts");
    writeFileSync(file, tsLines.join("\n") + "\n");
    const program = ts.createProgram([file], {
      noEmit: true,
      strict: true,
      skipLibCheck: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
    });
    for (const d of ts.getPreEmitDiagnostics(program)) {
      const text = ts.flattenDiagnosticMessageText(d.messageText, " ");
      let owner = -1;
      if (d.file && d.file.fileName === file && d.start !== undefined) {
        const { line } = d.file.getLineAndCharacterOfPosition(d.start);
        owner = tsLineOwner.get(line) ?? -1;
      }
      if (owner >= 0) {
        results[owner].ok = false;
        results[owner].errors.push(`unknown or mistyped field: ${text}`);
      } else {
        // A diagnostic we cannot attribute still fails the run.
        results.push({ id: "typescript", ok: false, errors: [text] });
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
console.log(JSON.stringify(results, null, 1));
process.exit(results.every((r) => r.ok) ? 0 : 1);
