#!/usr/bin/env bash
# Run the job end to end on this machine as it runs on a cluster: a local S3 server (moto),
# a Ray head on loopback, and `ray job submit`. Needs the test extras (`pip install -e '.[test]'`).
#   bash infra/local-s3-ray.sh [IMAGES_DIR]     (default: ../shared/samples)
set -euo pipefail
cd "$(dirname "$0")/.."
images=${1:-../shared/samples}
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export RAY_AUTH_MODE=disabled  # loopback only: nothing off this machine can reach the head
s3_port=${S3_PORT:-9000} dashboard_port=${DASHBOARD_PORT:-8265}
endpoint=http://127.0.0.1:$s3_port

moto_server -H 127.0.0.1 -p "$s3_port" > /tmp/streetblur-moto.log 2>&1 &
moto_pid=$!
cleanup() { ray stop --force > /dev/null 2>&1 || true; kill "$moto_pid" 2> /dev/null || true; }
trap cleanup EXIT
ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 \
    --dashboard-port="$dashboard_port" --disable-usage-stats > /dev/null

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

ray job submit --address "http://127.0.0.1:$dashboard_port" \
    --runtime-env-json "{\"env_vars\": {\"AWS_ACCESS_KEY_ID\": \"testing\", \"AWS_SECRET_ACCESS_KEY\": \"testing\", \"AWS_DEFAULT_REGION\": \"us-east-1\"}}" \
    -- "$(command -v python)" -m jobs.blur_job \
    --input s3://photos/raw --output s3://photos/blurred --endpoint-url "$endpoint"

python - "$endpoint" <<'PY'
import io
import sys

import boto3
import pyarrow.parquet as pq

s3 = boto3.client("s3", endpoint_url=sys.argv[1])
body = s3.get_object(Bucket="photos", Key="blurred/_streetblur/manifest.parquet")["Body"].read()
table = pq.read_table(io.BytesIO(body), columns=["key", "status", "faces", "plates", "error"])
print(table.to_pandas().to_string(index=False))
PY
