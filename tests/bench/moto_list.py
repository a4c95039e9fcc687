"""How long one narrow-prefix LIST takes on moto as its bucket grows.

docs/benchmarks.md (Sync) uses it to explain the S3 checkpoint figures:
a checkpoint makes the same requests at any workspace size, two of them
LISTs of a three-key prefix, and moto scans every key of the bucket for
each LIST (real S3 does not). Start a moto of its own first:

    AGENTBOX_MOTO_PORT=9571 AGENTBOX_MOTO_PIDFILE=/tmp/list-moto.pid \
      bash tests/setup/ensure-moto.sh
    MOTO_URL=http://127.0.0.1:9571 python3 tests/bench/moto_list.py [OUT.json]

With OUT.json it also writes the raw results there: every sample, the
commit and the load before and after.
"""
import concurrent.futures as cf
import json
import subprocess
import sys
import os
import statistics
import time

import boto3

s3 = boto3.client("s3", endpoint_url=os.environ.get("MOTO_URL", "http://127.0.0.1:9571"), aws_access_key_id="x",
                  aws_secret_access_key="x", region_name="us-east-1")
s3.create_bucket(Bucket="listbench")
for i in range(3):
    s3.put_object(Bucket="listbench", Key=f"conv/manifests/{i:020}.json", Body=b"{}")
def load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()
context = {"command": ["python3", "tests/bench/moto_list.py", *sys.argv[1:]], "commit": git("rev-parse", "HEAD"),
           "dirty": bool(git("status", "--porcelain", "--untracked-files=no")), "load_before": load()}
rows = []
have = 0
def put(i):
    s3.put_object(Bucket="listbench", Key=f"other/d{i//50:05}/f{i:06}", Body=b"x"*200)
with cf.ThreadPoolExecutor(16) as ex:
    for n in [1000, 10000, 50000, 100000]:
        list(ex.map(put, range(have, n)))
        have = n
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            s3.list_objects_v2(Bucket="listbench", Prefix="conv/manifests/")
            ts.append((time.perf_counter() - t0) * 1000)
        rows.append({"objects": n + 3, "narrow_list_ms": ts})
        print(f"{n + 3} objects: narrow LIST median {statistics.median(ts):.0f} ms (min {min(ts):.0f}, max {max(ts):.0f})", flush=True)
context["load_after"] = load()
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump({"context": context, "rows": rows}, f, indent=2)
    print(f"raw results in {sys.argv[1]}")
