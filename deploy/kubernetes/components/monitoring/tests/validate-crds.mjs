// Validates the ServiceMonitor and PrometheusRule objects of a JSON array (argv[3]) against
// the prometheus-operator API schemas, as compiled into @kubernetes-models/prometheus-operator
// (installed under argv[2] by scripts/ci/install-monitoring-tools.sh). Prints one line per
// object; exits 1 when any is invalid.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modelsDir, objectsFile] = process.argv.slice(2);
const kinds = ["ServiceMonitor", "PrometheusRule"];
const models = {};
for (const kind of kinds) {
  const file = join(modelsDir, "node_modules/@kubernetes-models/prometheus-operator",
    "monitoring.coreos.com/v1", `${kind}.js`);
  models[kind] = (await import(pathToFileURL(file).href))[kind];
}
let failed = 0;
let checked = 0;
for (const object of JSON.parse(readFileSync(objectsFile, "utf8"))) {
  const Model = object.apiVersion === "monitoring.coreos.com/v1" ? models[object.kind] : undefined;
  if (Model === undefined) continue;
  checked += 1;
  try {
    new Model(object).validate();
    console.log(`valid ${object.kind}/${object.metadata.name}`);
  } catch (error) {
    failed += 1;
    console.log(`INVALID ${object.kind}/${object.metadata.name}: ${error.message}`);
  }
}
console.log(`${checked} checked, ${failed} invalid`);
process.exit(failed || checked === 0 ? 1 : 0);
