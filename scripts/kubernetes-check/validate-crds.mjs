// Validates ServiceMonitor and PrometheusRule resources against the Prometheus Operator's
// CRD schemas (as packaged by @kubernetes-models/prometheus-operator). Usage:
//   node validate-crds.mjs FILE...
// Exits 1 when a resource does not validate or has a kind this script does not know.
import fs from 'node:fs';
import * as yaml from 'js-yaml';
import { ServiceMonitor, PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';

const kinds = { ServiceMonitor, PrometheusRule };
let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, 'utf8'))) {
    if (!doc) continue;
    const name = `${doc.kind}/${doc.metadata && doc.metadata.name}`;
    const Kind = kinds[doc.kind];
    if (!Kind) {
      console.error(`ERROR ${file}: ${name}: no schema for this kind here`);
      failed++;
      continue;
    }
    try {
      new Kind(doc).validate();
      console.log(`INFO ${file} passed for ${name}`);
    } catch (e) {
      console.error(`ERROR ${file}: ${name}: ${e.message}`);
      failed++;
    }
  }
}
process.exit(failed ? 1 : 0);
