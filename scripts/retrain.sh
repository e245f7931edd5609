#!/usr/bin/env bash
# Retrain on the current data and params (CI: .github/workflows/retrain.yml; also fine by hand).
#   1. dvc repro: validate data/sessions.jsonl (report: metrics/validation.json; the run reuses this pass),
#      cross-validate, gate, release, register in ZenML (staging on pass); the gate failing fails this script;
#   2. `dvc metrics diff HEAD~1 --md` to $GITHUB_STEP_SUMMARY when set, else stdout;
#   3. dvc push when CARE_PUSH=1 and a default DVC remote is configured.
# Usage: bash scripts/retrain.sh [extra `dvc repro` arguments, e.g. --force or a stage name]
set -euo pipefail
cd "$(dirname "$0")/.."
export DVC_NO_ANALYTICS=1 ZENML_ANALYTICS_OPT_IN=false GX_ANALYTICS_ENABLED=false ORT_DISABLE_TELEMETRY=1
if [[ -f .venv/bin/activate ]]; then . .venv/bin/activate; fi

dvc repro "$@"

summary() {
  echo "## CARE retrain: metrics"
  echo
  if git rev-parse --quiet --verify 'HEAD~1^{commit}' >/dev/null 2>&1; then
    echo "Changes since $(git rev-parse --short HEAD~1) (the previous commit):"
    echo
    local diff
    diff="$(dvc metrics diff HEAD~1 --md)" || diff="(dvc metrics diff HEAD~1 failed; see the job log)"
    if [[ -n "$diff" ]]; then echo "$diff"; else echo "No metric changed."; echo; dvc metrics show --md; fi
  else
    echo "No previous commit to compare with (first commit, or a shallow clone with fetch-depth 1); current metrics:"
    echo
    dvc metrics show --md
  fi
}
if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then summary >>"$GITHUB_STEP_SUMMARY"; else summary; fi

if [[ "${CARE_PUSH:-0}" == "1" ]]; then
  if [[ -n "$(dvc remote default 2>/dev/null || true)" ]]; then
    dvc push
  else
    echo "CARE_PUSH=1 but no default DVC remote is configured: nothing pushed" >&2
  fi
fi
