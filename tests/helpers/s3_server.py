"""moto's S3 server on 127.0.0.1 for tests of a run dir on S3: started in a thread, stopped on exit.

`moto_s3(*buckets)` yields the environment (AWS_* variables, endpoint) that boto3 and s3fs read,
for this process (monkeypatch it in) and for the torchrun nodes a test starts (pass it to them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import boto3
import moto.server as moto_server

SECRET = "msa-test-secret-Zq8Xk2"  # a test greps every file of the run for it


@contextlib.contextmanager
def moto_s3(*buckets: str) -> Iterator[dict]:
    """moto's server on a free 127.0.0.1 port, with `buckets` created; yields its AWS environment."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            "AWS_ACCESS_KEY_ID": "msa-test-key",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
            "AWS_MAX_ATTEMPTS": "2",
        }
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL_S3"],
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=SECRET,
        )
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()
