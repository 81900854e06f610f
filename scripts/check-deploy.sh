#!/usr/bin/env bash
# The deploy files checked, not only written (CI runs this):
#   - deploy/k8s/*.yaml against the Kubernetes schemas of every version we
#     support (kubernetes-validate --strict, from PyPI): 1.30 to 1.37;
#   - deploy/compose.yaml parsed by podman-compose (PyPI), the compose
#     implementation that runs here (tests/container/ runs the same topology).
# Tools in their own venv under $DISTILSERVE_CACHE (pinned).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0 1.36.0 1.37.0}"
venv="$CACHE_DIR/deploy-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/podman-compose" ]; then
  log "installing kubernetes-validate and podman-compose into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==1.37.0" "podman-compose==1.6.0" >&2
fi
cd "$REPO_ROOT"
for v in $K8S_VERSIONS; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" deploy/k8s/*.yaml \
    || die "deploy/k8s does not validate against Kubernetes $v"
done
log "deploy/k8s/*.yaml valid (strict) against Kubernetes ${K8S_VERSIONS// /, }"
"$venv/bin/podman-compose" -f deploy/compose.yaml config >"$CACHE_DIR/compose.resolved.yaml" \
  || die "podman-compose rejects deploy/compose.yaml"
# What it resolved: both services, the replicas' limits and the shared heads volume.
"$venv/bin/python" - "$CACHE_DIR/compose.resolved.yaml" <<'PY' || die "deploy/compose.yaml resolves to the wrong topology"
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
s = c["services"]
assert set(s) == {"distilserve", "nginx"}, s.keys()
d = s["distilserve"]
assert d["deploy"]["replicas"] == 3 and d["deploy"]["mode"] == "replicated" and d["deploy"]["resources"]["limits"]["memory"] == "512M", d["deploy"]
assert d["read_only"] is True and "heads:/app/models/heads" in d["volumes"], d
assert "heads" in c["volumes"] and s["nginx"]["depends_on"]["distilserve"]["condition"] == "service_healthy"
PY
log "deploy/compose.yaml parsed by podman-compose"
