#!/bin/bash
# Submit a sharded run: N array tasks (shard.sbatch) and a finalize job that starts when all have ended.
#   SOURCE=s3://archive/dicom/ DEST=s3://shared/deid/ TABLES=s3://private/deid-tables/ \
#     deploy/slurm/submit.sh 16 [extra sbatch options, e.g. --partition=cpu --account=lab]
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: SOURCE=... DEST=... TABLES=... $0 N [sbatch options]" >&2
    exit 2
fi
shards=$1
shift
: "${SOURCE:?set SOURCE}" "${DEST:?set DEST}" "${TABLES:?set TABLES}"
here=$(cd "$(dirname "$0")" && pwd)
# --parsable prints "jobid" or "jobid;cluster"; the environment (SOURCE, DEST, TABLES, ...) goes along.
array=$(sbatch --parsable --export=ALL "--array=0-$((shards - 1))" "$@" "$here/shard.sbatch")
array=${array%%;*}
final=$(sbatch --parsable --export=ALL "--dependency=afterany:${array}" "$@" "$here/finalize.sbatch")
final=${final%%;*}
echo "shards: job ${array} (tasks 0-$((shards - 1))); finalize: job ${final}"
echo "watch: squeue -j ${array},${final}   logs: dicom-deid-shard-${array}_*.out"
