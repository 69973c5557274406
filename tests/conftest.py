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
