#!/usr/bin/env bash
# Validates the Kubernetes manifests in cluster-configs/kubernetes/:
#  - core resources against the Kubernetes OpenAPI schemas, strictly (unknown fields are
#    errors), for the oldest version they need (1.31: StatefulSet ordinals) and the newest,
#    with kubernetes-validate (PyPI);
#  - the Prometheus Operator resources (ServiceMonitor, PrometheusRule) against the
#    operator's CRD schemas, with @kubernetes-models/prometheus-operator (npm, lockfile in
#    scripts/kubernetes-check/);
#  - the PrometheusRule holds exactly the rules of cluster-configs/prometheus/alerts.yml;
#  - `kubectl kustomize` builds the directory, when kubectl is installed.
# That the commands and the cluster config in the manifests match the program is checked by
# `cargo test` (src/cli/kubernetes_manifests.rs).
#   scripts/check-kubernetes.sh                 check
#   scripts/check-kubernetes.sh --write-rules   regenerate 51-alerts.yaml from alerts.yml
set -euo pipefail
cd "$(dirname "$0")/.."
dir=cluster-configs/kubernetes
tools=${SHOAL_TOOLS_DIR:-$PWD/target/kubernetes-check}
venv=$tools/venv
mkdir -p "$tools"

if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi

rules() {
  "$venv/bin/python" - "$@" <<'PY'
import sys, yaml
rules = yaml.safe_load(open("cluster-configs/prometheus/alerts.yml"))
path = "cluster-configs/kubernetes/51-alerts.yaml"
if sys.argv[1:] == ["--write"]:
    doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": "shoal", "namespace": "shoal", "labels": {"app.kubernetes.io/part-of": "shoal"}},
           "spec": {"groups": rules["groups"]}}
    head = ("# The alert rules of cluster-configs/prometheus/alerts.yml as a Prometheus Operator\n"
            "# PrometheusRule (runbooks: docs/operations.md). Generated; scripts/check-kubernetes.sh\n"
            "# fails when the two differ. Regenerate with: scripts/check-kubernetes.sh --write-rules\n")
    open(path, "w").write(head + yaml.safe_dump(doc, sort_keys=False, width=110, allow_unicode=True))
    print(f"wrote {path}")
else:
    have = yaml.safe_load(open(path))["spec"]["groups"]
    if have != rules["groups"]:
        sys.exit(f"ERROR {path} differs from cluster-configs/prometheus/alerts.yml: run scripts/check-kubernetes.sh --write-rules")
    n = sum(len(g["rules"]) for g in have)
    print(f"INFO {path} holds the {n} rules of alerts.yml")
PY
}

if [ "${1:-}" = --write-rules ]; then
  rules --write
  exit 0
fi

core=()
crds=()
for f in "$dir"/*.yaml; do
  case "$(basename "$f")" in
    kustomization.yaml) ;;
    *) if grep -q '^apiVersion: monitoring.coreos.com/' "$f"; then crds+=("$f"); else core+=("$f"); fi ;;
  esac
done

for version in 1.31.0 1.37.0; do
  echo "== Kubernetes $version schemas (strict)"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${core[@]}"
  echo "${#core[@]} files passed"
done

echo "== Prometheus Operator CRD schemas"
(cd scripts/kubernetes-check && { [ -d node_modules ] || npm ci --silent --no-audit --no-fund; })
node scripts/kubernetes-check/validate-crds.mjs "${crds[@]}"

echo "== alert rules"
rules

if command -v kubectl >/dev/null; then
  echo "== kubectl kustomize"
  n=$(kubectl kustomize "$dir" | grep -c '^kind:')
  echo "the kustomization builds: $n resources"
else
  echo "note: no kubectl here; the kustomization build was not checked"
fi
