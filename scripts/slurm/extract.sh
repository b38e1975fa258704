#!/bin/bash
# Extraction on a SLURM cluster: a job array of N tasks, one shard store each, then one job that merges them.
#   scripts/slurm/extract.sh RAW_DIR STORE N [a2m extract options, e.g. --config configs/grid.yaml]
# Run it from the repo root (the jobs use .venv/bin/a2m from there; set A2M= to use another). Logs go to
# logs/slurm/. With SBATCH_WAIT=1 in the environment it returns when the merge has finished.
# sbatch options for the array's tasks, replacing extract.sbatch's defaults (4 CPUs, 8 GB, 8 h each), go in
# EXTRACT_SBATCH_OPTIONS, e.g. EXTRACT_SBATCH_OPTIONS="--cpus-per-task=8 --mem=16G --partition=cpu".
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 RAW_DIR STORE N [a2m extract options]" >&2
  exit 2
fi
RAW=$1 STORE=$2 N=$3
shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p logs/slurm
# shellcheck disable=SC2086  # the options are words on purpose
ARRAY=$(env -u SBATCH_WAIT sbatch --parsable ${EXTRACT_SBATCH_OPTIONS:-} --array=0-$((N - 1)) --output=logs/slurm/extract-%A_%a.out \
  "$HERE/extract.sbatch" "$RAW" "$STORE" "$@")
echo "extraction: job array $ARRAY ($N tasks) -> $STORE.shards/"
MERGE=$(sbatch --parsable --dependency=afterok:"$ARRAY" --kill-on-invalid-dep=yes --output=logs/slurm/merge-%j.out \
  "$HERE/merge.sbatch" "$STORE")
echo "merge: job $MERGE -> $STORE (after the array succeeds)"
