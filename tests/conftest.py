import logging

import pytest

import pykvstore as kv


@pytest.fixture
def bucket(tmp_path):
    return tmp_path / "bucket"


@pytest.fixture
def store(bucket):
    s = kv.KVStore(bucket, model="test/model", capacity="1GiB", chunk_tokens=32)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _pykvstore_logs(caplog):
    caplog.set_level(logging.INFO, logger="pykvstore")


@pytest.fixture(params=["auto", "off"], ids=["mapped", "read"])
def read_path(request):
    """Loads into host memory through the file mapping (the default) or through read buffers."""
    before = kv.defaults.get("mmap_read")
    kv.defaults.set(mmap_read=request.param)
    yield request.param
    kv.defaults.set(mmap_read=before)


@pytest.fixture
def no_fsync():
    """Tests of error paths, not durability: skip fsync to keep them fast."""
    before = kv.defaults.get("fsync")
    kv.defaults.set(fsync=False)
    yield
    kv.defaults.set(fsync=before)


@pytest.fixture
def one_io_thread():
    """One I/O thread: the n-th write the engine starts is the n-th chunk of a put."""
    before = kv.defaults.get("io_threads")
    kv.defaults.set(io_threads=1)
    yield
    kv.defaults.set(io_threads=before)
