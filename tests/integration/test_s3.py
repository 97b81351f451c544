"""`s3://` shard sets (data/stores/s3.py) against moto's S3 server, started here on 127.0.0.1, with credentials and
endpoint from the AWS environment variables; a small proxy in front of it answers 403 or 503 SlowDown on
demand. A missing bucket, a denied request and throttling each end in one line or a bounded retry."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3  # the [s3] extra; boto3 and moto[server] are in the test extra: CI runs these, never skips them
import moto.server as moto_server
import pytest

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.data.indexer import index_shard_set
from msa_dist.data.loading.loader import StreamSpec, build_loader, iter_texts
from msa_dist.data.loading.reader import ShardSet
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.data.verify import verify_shards
from msa_dist.models.tokenizer import train_wordpiece_tokenizer

FAULTS = {"deny": False, "throttle": 0, "answered_503": 0}
_LOCK = threading.Lock()


class FaultProxy(BaseHTTPRequestHandler):
    """Forwards to moto; answers 403 AccessDenied while FAULTS['deny'], 503 SlowDown FAULTS['throttle'] times."""

    protocol_version = "HTTP/1.1"
    upstream = ("127.0.0.1", 0)

    def log_message(self, format, *args) -> None:
        pass

    def _fault(self) -> tuple[int, str] | None:
        with _LOCK:
            if FAULTS["deny"]:
                return 403, "AccessDenied"
            if FAULTS["throttle"]:
                FAULTS["throttle"] -= 1
                FAULTS["answered_503"] += 1
                return 503, "SlowDown"
        return None

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        fault = self._fault()
        if fault is not None:
            status, code = fault
            payload = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
        else:
            conn = http.client.HTTPConnection(*self.upstream, timeout=30)
            conn.request(
                self.command,
                self.path,
                body=body or None,
                headers={k: v for k, v in self.headers.items() if k.lower() != "content-length"},
            )
            response = conn.getresponse()
            status, payload = response.status, response.read()
            headers = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
            conn.close()
        self.send_response(status)
        for key, value in [] if fault else headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward


@pytest.fixture(scope="module")
def moto():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), type("Proxy", (FaultProxy,), {"upstream": (host, port)}))
    proxy.daemon_threads = True
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}", f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=5)
        server.stop()


@pytest.fixture
def aws(moto, monkeypatch):
    """The AWS environment pointing at the proxy in front of moto; returns a boto3 client to moto itself."""
    direct, proxied = moto
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": proxied,
        "AWS_MAX_ATTEMPTS": "3",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_RETRY_MODE"):
        monkeypatch.delenv(key, raising=False)
    FAULTS.update(deny=False, throttle=0, answered_503=0)
    yield boto3.client("s3", endpoint_url=direct, region_name="us-east-1")
    FAULTS.update(deny=False, throttle=0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3")
    raw = write_synthetic_dataset(root / "raw", n_labelled=60, n_test=6, image_px=32)
    build_shards(raw, root / "shards", val_fraction=0.2, seed=0, shard_size=20)
    return root / "shards"


def _upload(client, bucket: str, folder, prefix: str = "set", only_tars: bool = False) -> str:
    if bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=bucket)
    for path in sorted(folder.iterdir()):
        if path.is_file() and (path.suffix == ".tar" or not only_tars):
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"


def test_training_batches_from_s3_equal_the_local_folder(aws, shards):
    url = _upload(aws, "msa-train", shards)
    tokenizer = train_wordpiece_tokenizer(iter_texts(url), vocab_size=80)
    assert sorted(iter_texts(url)) == sorted(iter_texts(str(shards)))
    cfg = load_config(base={"data": {"workers": 2, "image_size": 32, "resize_size": 32}}).data
    spec = StreamSpec("train", True, 8, seed=3)
    local = [(b["keys"], b["images"]) for b in build_loader(cfg, str(shards), spec, tokenizer)]
    remote = [(b["keys"], b["images"]) for b in build_loader(cfg, url, spec, tokenizer)]
    assert [k for k, _ in remote] == [k for k, _ in local] and len(local) == 6
    assert all(a.equal(b) for (_, a), (_, b) in zip(remote, local))
    assert verify_shards(url)["samples"] == 66


def test_shards_index_writes_indexes_into_the_bucket(aws, shards):
    url = _upload(aws, "msa-index", shards, only_tars=True)
    assert index_shard_set(url) == {"train": 48, "val": 12, "test": 6}
    assert verify_shards(url)["samples"] == 66


def test_a_missing_bucket_is_one_line(aws):
    with pytest.raises(MsaDistError, match="the bucket no-such-bucket does not exist") as err:
        ShardSet("s3://no-such-bucket/shards")
    assert "\n" not in str(err.value)


def test_a_denied_request_is_one_line(aws, shards):
    url = _upload(aws, "msa-denied", shards)
    FAULTS["deny"] = True
    with pytest.raises(MsaDistError, match="access denied .*AccessDenied.*AWS_ACCESS_KEY_ID") as err:
        ShardSet(url)
    assert "\n" not in str(err.value)


def test_throttling_is_retried_a_bounded_number_of_times(aws, shards):
    url = _upload(aws, "msa-throttled", shards)
    FAULTS["throttle"] = 2  # two 503 SlowDown answers, then the real ones: AWS_MAX_ATTEMPTS=3 gets through
    assert ShardSet(url).samples("train") == 48
    assert FAULTS["answered_503"] == 2
    FAULTS.update(throttle=10**6, answered_503=0)  # throttled for good: 3 attempts, then one line
    with pytest.raises(MsaDistError, match="throttling requests \\(SlowDown\\)") as err:
        ShardSet(url)
    assert FAULTS["answered_503"] == 3 and "\n" not in str(err.value)


def test_missing_credentials_are_one_line(aws, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(MsaDistError, match="no AWS credentials"):
        ShardSet("s3://msa-train/set")
