#!/usr/bin/env bash
# Turn on versioning and apply agentbox's lifecycle policy to an S3 bucket.
#
#   appliance/s3/apply-lifecycle.sh BUCKET [ENDPOINT_URL]
#
#   BUCKET        the bucket that storage.url names (s3://BUCKET/...)
#   ENDPOINT_URL  for MinIO or another S3 server (e.g. http://127.0.0.1:9000);
#                 AWS when omitted
#
# Credentials and region come from the AWS CLI's usual chain (environment,
# ~/.aws, instance role). Needs the AWS CLI (Debian: awscli). Idempotent.
# The policy is lifecycle-policy.json beside this script; see README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POLICY=$HERE/lifecycle-policy.json

say() { printf 'apply-lifecycle: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[[ $# -ge 1 && $# -le 2 && -n $1 ]] || die "usage: $0 BUCKET [ENDPOINT_URL]"
BUCKET=$1
ARGS=()
[[ -n ${2:-} ]] && ARGS=(--endpoint-url "$2")
command -v aws >/dev/null 2>&1 || die "the AWS CLI (aws) is not installed (apt-get install awscli)"
[[ -f $POLICY ]] || die "missing $POLICY"

# Versioning first: the noncurrent-version rule only means something with it,
# and it keeps an overwritten or deleted object recoverable for 30 days.
aws "${ARGS[@]}" s3api put-bucket-versioning --bucket "$BUCKET" \
  --versioning-configuration Status=Enabled
aws "${ARGS[@]}" s3api put-bucket-lifecycle-configuration --bucket "$BUCKET" \
  --lifecycle-configuration "file://$POLICY"

status=$(aws "${ARGS[@]}" s3api get-bucket-versioning --bucket "$BUCKET" --query Status --output text)
[[ $status == Enabled ]] || die "versioning is '$status' after enabling it"
rules=$(aws "${ARGS[@]}" s3api get-bucket-lifecycle-configuration --bucket "$BUCKET" \
  --query 'length(Rules)' --output text)
say "bucket $BUCKET: versioning Enabled, $rules lifecycle rules applied"
