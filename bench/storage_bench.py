"""Upload throughput and client memory of the storage backends against local servers (loopback).

    .venv/bin/python bench/storage_bench.py [--mb 100]

s3: moto in server mode (its own process), boto3 multipart. supabase: the Storage API test server
(in process), TUS in 6 MiB chunks. Peak memory is Python's traced allocations during the upload.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr  # noqa: E402

from mindscript.storage.base import RetryPolicy, render_key  # noqa: E402
from mindscript.storage.s3 import S3Config, S3Storage  # noqa: E402
from mindscript.storage.supabase import SupabaseConfig, SupabaseStorage  # noqa: E402
from tests.servers.process import server_process  # noqa: E402
from tests.servers.storage_supabase import SupabaseStorageServer  # noqa: E402


def measure(storage, path: Path, digest: str) -> tuple[float, float]:  # noqa: ANN001
    tracemalloc.start()
    t0 = time.perf_counter()
    storage.put(path, render_key("bench", digest, "wav"), content_type="audio/wav", public=False, sha256=digest)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak / (1 << 20)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=100)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.wav"
        h = hashlib.sha256()
        with open(path, "wb") as f:
            for _ in range(args.mb):
                block = os.urandom(1 << 20)
                f.write(block)
                h.update(block)
        digest = h.hexdigest()
        with server_process("tests.servers.storage_s3") as port:
            s3 = S3Storage(S3Config(public_bucket="bench-pub", private_bucket="bench-priv",
                                    endpoint_url=f"http://127.0.0.1:{port}", access_key_id="bench",
                                    secret_access_key=SecretStr("bench")), RetryPolicy(base_delay_s=0.01))
            t, m = measure(s3, path, digest)
            print(f"s3 (moto, multipart 8 MiB x4): {args.mb} MiB in {t:.2f} s = {args.mb / t:.1f} MiB/s, "
                  f"peak traced {m:.1f} MiB")
        with SupabaseStorageServer(Path(tmp) / "srv", "bench-key") as srv:
            sb = SupabaseStorage(SupabaseConfig(url=srv.url, service_key=SecretStr("bench-key"),
                                                public_bucket="bench-pub", private_bucket="bench-priv"),
                                 RetryPolicy(base_delay_s=0.01))
            t, m = measure(sb, path, digest)
            print(f"supabase (TUS 6 MiB chunks): {args.mb} MiB in {t:.2f} s = {args.mb / t:.1f} MiB/s, "
                  f"peak traced {m:.1f} MiB")


if __name__ == "__main__":
    main()
