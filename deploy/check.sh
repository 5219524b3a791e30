#!/usr/bin/env bash
# Checks deploy/ without a cluster or AWS: renders every kustomization and
# validates it against the Kubernetes schemas, checks the broker's RBAC against
# its API-call list, lints and renders the Helm chart (default values and each
# deploy/helm/attache/ci/*-values.yaml) and validates it the same way, lints
# the CloudFormation template, and checks the Dockerfile names both binaries.
# Needs kubectl, helm (cargo xtask tools helm), python3 and the packages in
# tests/requirements.txt (kubernetes-validate, cfn-lint). CI runs it from
# .ci/run; run it yourself from anywhere: bash deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.37.0
# The tools venv (cargo xtask tools python) when present, else python3.
PYTHON=${PYTHON:-python3}
[[ -x target/tools/venv/bin/python3 && $PYTHON == python3 ]] && PYTHON=target/tools/venv/bin/python3
# The pinned helm (tests/tools.toml) when built, else helm on PATH.
HELM=${HELM:-helm}
[[ -x target/tools/bin/helm && $HELM == helm ]] && HELM=target/tools/bin/helm
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== deploy: kustomize + kubernetes-validate $K8S_VERSION"
mapfile -t dirs < <(find deploy -name kustomization.yaml -printf '%h\n' | sort)
((${#dirs[@]} >= 3)) || { echo "deploy/check.sh: expected the base and the examples, found: ${dirs[*]}" >&2; exit 1; }
for dir in "${dirs[@]}"; do
  file="$out/${dir//\//_}.yaml"
  kubectl kustomize "$dir" >"$file"
  "$PYTHON" -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" "$file"
  echo "ok $dir ($(grep -c '^kind:' "$file") objects)"
done

echo "== deploy: RBAC of each identity (broker, ECR controller) vs deploy/kubernetes/broker-api-calls.json"
for dir in "${dirs[@]}"; do
  # The base, and every overlay of it (they install the broker too).
  file="$out/${dir//\//_}.yaml"
  if [[ $dir == deploy/kubernetes ]] || grep -q '^kind: MutatingWebhookConfiguration' "$file"; then
    echo -n "$dir: "
    "$PYTHON" deploy/check_rbac.py deploy/kubernetes/broker-api-calls.json "$file"
  fi
done

echo "== deploy: helm chart: lint --strict, template + kubernetes-validate $K8S_VERSION, ServiceMonitor, RBAC"
command -v "$HELM" >/dev/null \
  || { echo "deploy/check.sh: helm not found: cargo xtask tools helm builds the pinned one into target/tools/bin" >&2; exit 1; }
chart=deploy/helm/attache
values_files=("$chart"/ci/*-values.yaml)
((${#values_files[@]} >= 2)) || { echo "deploy/check.sh: expected $chart/ci/all-values.yaml and ca-dir-values.yaml" >&2; exit 1; }
for values in "" "${values_files[@]}"; do
  args=(--namespace attache-system)
  name=defaults
  if [[ -n $values ]]; then
    args+=(-f "$values")
    name=$(basename "$values" .yaml)
  fi
  "$HELM" lint --strict --quiet "$chart" "${args[@]}" >"$out/lint.txt" 2>&1 \
    || { cat "$out/lint.txt" >&2; echo "deploy/check.sh: helm lint --strict $chart ($name) failed" >&2; exit 1; }
  file="$out/helm-$name.yaml"
  "$HELM" template attache "$chart" "${args[@]}" >"$file"
  # kubernetes-validate has no schema for the ServiceMonitor CRD (it only
  # warns): check_rendered.py leaves it out of the validated copy and checks
  # its shape and that it reaches both Deployments' metrics ports itself.
  "$PYTHON" deploy/helm/check_rendered.py "$file" "$out/helm-$name.core.yaml"
  "$PYTHON" -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" "$out/helm-$name.core.yaml"
  if grep -q 'args: \["ecr-controller"\]' "$file"; then
    # Both identities installed: their RBAC against the API-call list, as for the base.
    echo -n "$chart ($name): "
    "$PYTHON" deploy/check_rbac.py deploy/kubernetes/broker-api-calls.json "$file"
  fi
  echo "ok $chart ($name: $(grep -c '^kind:' "$file") objects)"
done

echo "== deploy: cfn-lint"
for t in deploy/aws/*.yaml; do
  # The console script may not be on PATH (pip --user, venvs): call its entry point.
  "$PYTHON" -c 'import sys; from cfnlint.runner import main; sys.exit(main())' "$t"
  echo "ok $t"
done

echo "== deploy: Dockerfile"
for bin in attache-broker attache-sidecar; do
  grep -q "^COPY --from=build /$bin /$bin\$" deploy/Dockerfile \
    || { echo "deploy/Dockerfile does not put /$bin in the image" >&2; exit 1; }
  grep -q -- "-p $bin" deploy/Dockerfile \
    || { echo "deploy/Dockerfile does not build $bin" >&2; exit 1; }
done
grep -q '^ENTRYPOINT \["/attache-sidecar"\]' deploy/Dockerfile \
  || { echo "deploy/Dockerfile: the entrypoint must be /attache-sidecar (the webhook injects args only)" >&2; exit 1; }
grep -q '^USER 65532' deploy/Dockerfile \
  || { echo "deploy/Dockerfile: the final image must run as non-root 65532" >&2; exit 1; }
echo "ok deploy/Dockerfile"
echo "deploy/check.sh: all checks passed"
