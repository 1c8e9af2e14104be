#!/usr/bin/env bash
# ray job submit for one stage: cluster/jobs/submit.sh STAGE CONFIG [--set KEY=VALUE ...]
#
# Run from the repository root against a cluster from cluster/aws/cluster.yaml, with the
# dashboard forwarded by `ray dashboard cluster/aws/cluster.yaml` (or RAY_ADDRESS set to the
# head's http://HOST:8265). Each stage is one job; this runs exactly:
#
#   ray job submit --address http://127.0.0.1:8265 --runtime-env cluster/runtime_env.yaml \
#     --submission-id adapt-extract-20250101T000000Z -- python jobs/extract.py --config cluster/configs/s3-clip.yaml
#   ray job submit ... -- python jobs/train.py --config cluster/configs/s3-clip.yaml
#   ray job submit ... -- python jobs/apply.py --config cluster/configs/s3-clip.yaml
#   ray job submit ... -- python jobs/score.py --config cluster/configs/s3-clip.yaml
#   ray job submit ... -- python jobs/nightly.py --config cluster/configs/s3-clip.yaml
#
# and waits, streaming the job's log; the exit status is the job's. Extra arguments go to the
# job (`--set extract.max_rows_per_shard=100` for a smoke run). Re-submitting a stage is safe:
# extract skips committed shards, train resumes its run from the last checkpoint.
set -euo pipefail

STAGES="extract train apply score nightly"
usage() { echo "usage: $0 STAGE CONFIG [--set KEY=VALUE ...]   (STAGE: ${STAGES// /, })" >&2; exit 2; }

[ $# -ge 2 ] || usage
stage=$1 config=$2
shift 2
case " $STAGES " in *" $stage "*) ;; *) echo "unknown stage '$stage'" >&2; usage ;; esac
[ -f "jobs/$stage.py" ] || { echo "jobs/$stage.py not found: run this from the repository root" >&2; exit 2; }
[ -f "$config" ] || { echo "config $config not found (it must be inside this checkout, which is what gets uploaded)" >&2; exit 2; }

exec ray job submit \
  --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --runtime-env cluster/runtime_env.yaml \
  --submission-id "adapt-$stage-$(date -u +%Y%m%dT%H%M%SZ)" \
  -- python "jobs/$stage.py" --config "$config" "$@"
