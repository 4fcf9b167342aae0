"""ls and warm through the control plane, and its token."""

import pytest

import shardcache
from shardcache import Client, PermissionDeniedError, ShardcacheError


def test_warm_then_ls_shows_everything_cached(server):
    c = Client(server.endpoint, control=server.control, token=server.token)
    result = c.warm("ds/train/")
    assert isinstance(result, shardcache.WarmResult)
    want = sorted(k for k in server.files if k.startswith("train/"))
    assert result.objects == len(want)
    assert result.bytes == sum(len(server.files[k]) for k in want)
    entries = c.ls("ds/train/")
    assert [e.key for e in entries] == want
    for e in entries:
        assert e.size == len(server.files[e.key])
        assert e.cached_fraction == 1.0
    again = c.warm("ds/train/")
    assert again.bytes == result.bytes > 0
    assert again.bytes_already_cached == again.bytes


def test_a_wrong_or_missing_token_is_a_permission_error(server):
    with pytest.raises(PermissionError, match="wrong bearer token") as e:
        Client(server.endpoint, control=server.control, token="nope").ls("ds/")
    assert isinstance(e.value, PermissionDeniedError) and isinstance(e.value, ShardcacheError)
    with pytest.raises(PermissionDeniedError, match="missing bearer token"):
        Client(server.endpoint, control=server.control).warm("ds/train/")


def test_control_errors_and_absence(server):
    c = Client(server.endpoint, control=server.control, token=server.token)
    with pytest.raises(FileNotFoundError, match="unknown dataset"):
        c.ls("nope/")
    with pytest.raises(FileNotFoundError, match="no objects under"):
        c.warm("ds/nothing-here")



def test_the_control_plane_is_the_one_the_server_names(server, other_server, server_without_control):
    # No control= at all: the data plane says where its control plane is.
    entries = Client(server.endpoint, token=server.token).ls("ds/train/")
    assert len(entries) == len([k for k in server.files if k.startswith("train/")])
    assert Client(server.endpoint).server_info().control == server.control
    # Another server's control plane is refused, saying so.
    with pytest.raises(ShardcacheError, match="another server"):
        Client(server.endpoint, control=other_server.control, token=server.token).ls("ds/")
    with pytest.raises(ShardcacheError, match="runs without one"):
        Client(server_without_control.endpoint).ls("ds/")
