#!/usr/bin/env bash
# Run the job end to end on this machine as it runs on a cluster: a local S3 server (moto),
# a Ray head on loopback, and `ray job submit`. Needs the test extras (`pip install -e '.[test]'`).
#   bash infra/local-s3-ray.sh [IMAGES_DIR]     (default: samples/, the photos shipped in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
images=${1:-samples}
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export RAY_AUTH_MODE=disabled  # loopback only: nothing off this machine can reach the head
s3_port=${S3_PORT:-9000} gcs_port=${GCS_PORT:-6379} dashboard_port=${DASHBOARD_PORT:-8265}
endpoint=http://127.0.0.1:$s3_port
address=http://127.0.0.1:$dashboard_port

moto_server -H 127.0.0.1 -p "$s3_port" > /tmp/streetblur-moto.log 2>&1 &
moto_pid=$!
ray_pid=""
# Stops this script's moto server and Ray head only (never `ray stop`, which stops every Ray on the
# machine): the head runs `--block` in its own process group, and the whole group is signalled.
cleanup() {
    if [[ -n $ray_pid ]]; then
        kill -TERM -- "-$ray_pid" 2> /dev/null || true
        for _ in $(seq 60); do kill -0 -- "-$ray_pid" 2> /dev/null || break; sleep 1; done
        kill -KILL -- "-$ray_pid" 2> /dev/null || true
    fi
    kill "$moto_pid" 2> /dev/null || true
}
trap cleanup EXIT
# A script has no job control, so this background job is no group leader and `setsid` makes the
# new session in place: $! is the head's pid and its process group id.
setsid ray start --head --block --node-ip-address=127.0.0.1 --port="$gcs_port" \
    --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" --disable-usage-stats \
    > /tmp/streetblur-ray.log 2>&1 &
ray_pid=$!
for attempt in $(seq 90); do  # ready = accepts a job (`ray job list` answers before the job agent runs)
    ray job submit --address "$address" -- python -c pass > /dev/null 2>&1 && break
    if ! kill -0 "$ray_pid" 2> /dev/null || ((attempt == 90)); then
        echo "the Ray head did not start; see /tmp/streetblur-ray.log" >&2
        exit 1
    fi
    sleep 2
done

python - "$endpoint" "$images" <<'PY'
import sys
from pathlib import Path

import boto3

endpoint, images = sys.argv[1], Path(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=endpoint)
s3.create_bucket(Bucket="photos")
for path in sorted(p for p in images.rglob("*") if p.is_file()):
    s3.upload_file(str(path), "photos", f"raw/{path.relative_to(images).as_posix()}")
print(f"uploaded {images} to s3://photos/raw/ on {endpoint}")
PY

ray job submit --address "$address" \
    --runtime-env-json "{\"env_vars\": {\"AWS_ACCESS_KEY_ID\": \"testing\", \"AWS_SECRET_ACCESS_KEY\": \"testing\", \"AWS_DEFAULT_REGION\": \"us-east-1\"}}" \
    -- "$(command -v streetblur)" run \
    --input s3://photos/raw --output s3://photos/blurred --endpoint-url "$endpoint"

python - "$endpoint" <<'PY'
import sys

from jobs.batch.manifest import read_manifest_rows
from storage.objects import Storage

for row in read_manifest_rows(Storage("s3://photos/blurred", sys.argv[1])):
    print(f"{row['key']:40} {row['status']:8} faces {row['faces']} plates {row['plates']} {row['error']}")
PY
