"""The S3-compatible endpoint read by boto3, unchanged but for the endpoint URL and keys:
ranged gets, heads, a paginated listing with a delimiter, a presigned GET, and each S3 error
a reader can meet."""

import urllib.request

import pytest

from conftest import free_port, start_server, stop, need

READER, READER_SECRET = "reader", "reader-secret-0123456789"
ADMIN, ADMIN_SECRET = "admin", "admin-secret-0123456789ab"


@pytest.fixture(scope="module")
def s3(tmp_path_factory, server):
    root = tmp_path_factory.mktemp("sc-s3")
    creds = root / "s3-credentials"
    creds.write_text(f"{READER}:{READER_SECRET}:ds\n{ADMIN}:{ADMIN_SECRET}\n")
    port = free_port()
    s = start_server(root, server.data, [
        "--dataset", f"other=file://{server.data}",
        "--s3-listen", f"127.0.0.1:{port}", "--s3-credentials", str(creds),
    ])
    s.files = server.files
    s.s3 = f"http://127.0.0.1:{port}"
    yield s
    stop(s)


def client(s3, key=READER, secret=READER_SECRET):
    boto3 = need("boto3")
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=s3.s3, aws_access_key_id=key, aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"max_attempts": 1}),
    )


def code_of(call):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as e:
        call()
    return e.value.response["Error"]["Code"]


def test_gets_ranges_and_heads(s3):
    c = client(s3)
    key = "train/shard-000005.bin"
    data = s3.files[key]
    assert c.get_object(Bucket="ds", Key=key)["Body"].read() == data
    got = c.get_object(Bucket="ds", Key=key, Range="bytes=1000-300999")
    assert got["Body"].read() == data[1000:301000]
    assert got["ContentRange"] == f"bytes 1000-300999/{len(data)}"
    assert c.get_object(Bucket="ds", Key=key, Range="bytes=-10")["Body"].read() == data[-10:]
    assert c.get_object(Bucket="ds", Key=key, Range="bytes=1999990-")["Body"].read() == data[1999990:]
    head = c.head_object(Bucket="ds", Key=key)
    assert head["ContentLength"] == len(data)
    etag = head["ETag"]
    assert c.get_object(Bucket="ds", Key=key, IfMatch=etag)["Body"].read() == data
    assert code_of(lambda: c.get_object(Bucket="ds", Key=key, IfMatch='"other"')) == "PreconditionFailed"
    assert code_of(lambda: c.get_object(Bucket="ds", Key=key, IfNoneMatch=etag)) == "304"
    # By date: the object's Last-Modified is the file's mtime.
    import datetime
    modified = head["LastModified"]
    later, earlier = modified + datetime.timedelta(days=1), modified - datetime.timedelta(days=1)
    assert code_of(lambda: c.get_object(Bucket="ds", Key=key, IfModifiedSince=later)) == "304"
    assert c.get_object(Bucket="ds", Key=key, IfModifiedSince=earlier)["Body"].read() == data
    assert code_of(lambda: c.get_object(Bucket="ds", Key=key, IfUnmodifiedSince=earlier)) == "PreconditionFailed"
    assert c.get_object(Bucket="ds", Key=key, IfUnmodifiedSince=later)["Body"].read() == data
    assert code_of(lambda: c.get_object(Bucket="ds", Key=key, PartNumber=1)) == "NotImplemented"
    assert c.get_bucket_location(Bucket="ds").get("LocationConstraint") in (None, "")
    empty = c.get_object(Bucket="ds", Key="train/shard-000000.bin")
    assert empty["ContentLength"] == 0 and empty["Body"].read() == b""


def test_a_paginated_listing_with_a_delimiter(s3):
    c = client(s3)
    pages = c.get_paginator("list_objects_v2").paginate(
        Bucket="ds", Prefix="train/", PaginationConfig={"PageSize": 2})
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys == sorted(k for k in s3.files if k.startswith("train/"))
    top = c.list_objects_v2(Bucket="ds", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["train/", "wds/"]
    assert "Contents" not in top or top["Contents"] == []
    # Pages of one entry with a delimiter: each common prefix once, across pages.
    pages = list(c.get_paginator("list_objects_v2").paginate(
        Bucket="ds", Delimiter="/", PaginationConfig={"PageSize": 1}))
    assert [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])] == ["train/", "wds/"]
    assert len(pages) == 2 and pages[0]["IsTruncated"] and not pages[1]["IsTruncated"]
    assert [b["Name"] for b in c.list_buckets()["Buckets"]] == ["ds"]
    assert [b["Name"] for b in client(s3, ADMIN, ADMIN_SECRET).list_buckets()["Buckets"]] == ["ds", "other"]


def test_a_presigned_get(s3):
    c = client(s3)
    key = "train/shard-000004.bin"
    url = c.generate_presigned_url("get_object", Params={"Bucket": "ds", "Key": key}, ExpiresIn=60)
    with urllib.request.urlopen(url) as r:
        assert r.read() == s3.files[key]
    # SigV4 (X-Amz-Signature); the same URL with one digit of the signature changed is refused.
    signature = url.split("X-Amz-Signature=")[1].split("&")[0]
    flipped = ("1" if signature[0] == "0" else "0") + signature[1:]
    bad = url.replace(signature, flipped)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(bad)
    assert e.value.code == 403


def test_each_error_a_reader_meets(s3):
    c = client(s3)
    assert code_of(lambda: c.get_object(Bucket="nope", Key="x")) == "NoSuchBucket"
    assert code_of(lambda: c.get_object(Bucket="ds", Key="train/missing.bin")) == "NoSuchKey"
    assert code_of(lambda: c.get_object(Bucket="ds", Key="train/shard-000002.bin",
                                        Range="bytes=5000-6000")) == "InvalidRange"
    assert code_of(lambda: c.get_object(Bucket="other", Key="train/shard-000002.bin")) == "AccessDenied"
    wrong = client(s3, READER, "not-the-secret-0000000000")
    assert code_of(lambda: wrong.get_object(Bucket="ds", Key="train/shard-000002.bin")) == "SignatureDoesNotMatch"
    stranger = client(s3, "nobody", READER_SECRET)
    assert code_of(lambda: stranger.list_objects_v2(Bucket="ds")) == "InvalidAccessKeyId"
    assert code_of(lambda: c.put_object(Bucket="ds", Key="train/new.bin", Body=b"x")) == "NotImplemented"
    assert code_of(lambda: c.delete_object(Bucket="ds", Key="train/shard-000002.bin")) == "NotImplemented"
    assert not (s3.data / "train/new.bin").exists()
    # Unsigned: refused (no --s3-anonymous on this server).
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{s3.s3}/ds/train/shard-000002.bin")
    assert e.value.code == 403


def aws_cli():
    """The AWS CLI beside this Python (scripts/test.sh installs awscli into the venv)."""
    import os
    import shutil
    import sys

    beside = os.path.join(os.path.dirname(sys.executable), "aws")
    found = beside if os.path.exists(beside) else shutil.which("aws")
    if found is None:
        if os.environ.get("SHARDCACHE_TEST_STRICT") == "1":
            pytest.fail("the AWS CLI is not installed (pip install awscli)")
        pytest.skip("the AWS CLI is not installed")
    return found


def test_the_aws_cli_copies_and_lists(s3, tmp_path):
    import os
    import subprocess

    env = dict(os.environ, AWS_ACCESS_KEY_ID=READER, AWS_SECRET_ACCESS_KEY=READER_SECRET,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    key = "train/shard-000005.bin"
    out = tmp_path / "copy.bin"
    run = lambda *args: subprocess.run([aws_cli(), *args, "--endpoint-url", s3.s3], env=env,
                                       capture_output=True, text=True, timeout=120)
    r = run("s3", "cp", f"s3://ds/{key}", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == s3.files[key]
    r = run("s3", "ls", "s3://ds/", "--recursive")
    assert r.returncode == 0, r.stderr
    listed = sorted(line.split()[-1] for line in r.stdout.splitlines() if line.strip())
    assert listed == sorted(s3.files)
    r = run("s3", "cp", str(out), "s3://ds/train/uploaded.bin")
    assert r.returncode != 0 and "NotImplemented" in r.stderr, r.stderr


def test_s3fs_through_fsspec(s3):
    fsspec = need("fsspec")
    need("s3fs")
    fs = fsspec.filesystem("s3", key=READER, secret=READER_SECRET,
                           client_kwargs={"endpoint_url": s3.s3, "region_name": "us-east-1"},
                           skip_instance_cache=True)
    key = "train/shard-000005.bin"
    data = s3.files[key]
    assert fs.cat(f"ds/{key}") == data
    with fs.open(f"ds/{key}", "rb", block_size=256 * 1024) as f:
        f.seek(123_456)
        assert f.read(500_000) == data[123_456:623_456]
    assert fs.info(f"ds/{key}")["size"] == len(data)
    assert sorted(fs.find("ds/train")) == sorted(f"ds/{k}" for k in s3.files if k.startswith("train/"))
    assert sorted(p.rstrip("/") for p in fs.ls("ds", detail=False)) == ["ds/train", "ds/wds"]
