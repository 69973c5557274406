"""Error paths of the small modules, each met for real: bad environment values and
settings, bad tokens, salts and sizes, a crafted access-history file (garbage, a
trigger that refuses inserts), a process that exits without closing its store,
configs and caches transformers would not produce, tensors the copy kernel must
refuse, a compiled-in CUDA engine with no device behind it.

Each test checks the documented outcome: an InputError-family message naming the
problem, a miss, a counter, nothing lost, nothing raised into the serving path.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import pykvstore as kv
from pykvstore import chunk_file, defaults, keys, policy, recorder, sizes, transfer
from pykvstore.errors import InputError, SizeError, TokensError
from pykvstore.recorder import Recorder, Stream
from workers import open_store, sequence

STREAM = Stream("m", "t", "ab" * 16, 32, 4096)


# --- defaults.py -----------------------------------------------------------------------------------
@pytest.mark.parametrize("knobs, match", [
    ({"direct_write": "sometimes"}, "direct_write must be one of off/auto/on, got 'sometimes'"),
    ({"direct_read": "ON"}, "direct_read must be one of off/auto/on"),
    ({"mmap_read": "on"}, "mmap_read must be off or auto, got 'on'"),
    ({"io_threads": 0}, "io_threads must be a positive integer, got 0"),
    ({"inflight": "8"}, "inflight must be a positive integer, got '8'"),
    ({"no_such_knob": 1}, "unknown setting 'no_such_knob'; known: buffer_cache"),
    ({"host_capacity": "lots"}, "host capacity 'lots' does not parse"),
])
def test_a_bad_setting_is_refused_and_the_old_value_kept(knobs, match):
    before = defaults.as_dict()
    with pytest.raises(InputError, match=match):
        defaults.set(**knobs)
    assert defaults.as_dict() == before


def test_sizes_given_to_set_are_parsed_like_the_environment_s(monkeypatch):
    monkeypatch.setitem(defaults._values, "host_capacity", defaults.get("host_capacity"))
    monkeypatch.setitem(defaults._values, "host_pool", defaults.get("host_pool"))
    defaults.set(host_capacity="3MiB", host_pool="auto")
    assert defaults.get("host_capacity") == 3 << 20 and defaults.get("host_pool") == 0
    defaults.set(host_pool="64MiB")
    assert defaults.get("host_pool") == 64 << 20


def test_yes_no_flags_read_strings_and_plain_values():
    assert [defaults.parse_flag(v) for v in ("0", "false", " No ", "OFF", "1", "yes", "on")] == \
        [False, False, False, False, True, True, True]
    assert [defaults.parse_flag(v) for v in (0, 1, False, True, None)] == [False, True, False, True, False]


def test_an_unknown_name_is_refused_by_get():
    with pytest.raises(InputError, match="unknown setting 'threads'"):
        defaults.get("threads")


@pytest.mark.parametrize("env, raw, match", [
    ("PYKVSTORE_IO_THREADS", "four", "PYKVSTORE_IO_THREADS='four' is not valid"),
    ("PYKVSTORE_IO_THREADS", "0", "io_threads must be a positive integer"),
    ("PYKVSTORE_DIRECT_READ", "maybe", "PYKVSTORE_DIRECT_READ='maybe' is not valid"),
    ("PYKVSTORE_HOST_CAPACITY", "-1GiB", "PYKVSTORE_HOST_CAPACITY='-1GiB' is not valid"),
])
def test_a_bad_environment_value_names_the_variable(monkeypatch, env, raw, match):
    name = {"PYKVSTORE_IO_THREADS": "io_threads", "PYKVSTORE_DIRECT_READ": "direct_read",
            "PYKVSTORE_HOST_CAPACITY": "host_capacity"}[env]
    monkeypatch.delitem(defaults._values, name, raising=False)  # read the environment again
    monkeypatch.setenv(env, raw)
    with pytest.raises(InputError, match=match):
        defaults.get(name)
    monkeypatch.delenv(env)
    assert defaults.get(name) == defaults.get(name)  # the built-in default reads fine once the variable is gone


def test_a_process_started_with_a_bad_variable_says_which(tmp_path):
    env = {**os.environ, "PYKVSTORE_IO_THREADS": "many"}
    r = subprocess.run([sys.executable, "-c", "import sys, pykvstore as kv; kv.KVStore(sys.argv[1], model='m')",
                        str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "PYKVSTORE_IO_THREADS='many' is not valid" in r.stderr


# --- keys.py -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tokens, match", [
    ([[1, 2], [3]], "tokens must be a 1-D sequence of integers"),
    ([1, None, 3], "tokens must be integers, got a sequence with non-integer items"),
    (np.array([1, True], dtype=object), r"tokens must be integers, got True at index 1 \(bools are not token ids\)"),
    (np.array([1, 2 ** 70], dtype=object), r"token ids must lie in \[0, 2\*\*32\), got values from 1 to"),
    (np.array([-1, 5], dtype=object), r"token ids must lie in \[0, 2\*\*32\), got values from -1 to 5"),
    ("1 2 3", "tokens must be a 1-D sequence of integers, got str"),
    (np.zeros((2, 2), dtype=np.int64), r"tokens must be 1-D, got an array of shape \(2, 2\)"),
    (np.array([1.0, 2.0]), "tokens must be integers, got dtype float64"),
])
def test_tokens_that_are_not_token_ids_are_refused_naming_the_problem(tokens, match):
    with pytest.raises(TokensError, match=match):
        keys.as_tokens(tokens)


def test_tokens_in_generic_containers_are_read_exactly():
    assert keys.as_tokens(np.array([], dtype=np.int64)).dtype == keys.TOKEN_DTYPE
    assert keys.as_tokens(torch.tensor([], dtype=torch.float32)).size == 0  # empty: no dtype to judge
    got = keys.as_tokens(np.array([7, 2 ** 32 - 1], dtype=object))
    assert got.dtype == keys.TOKEN_DTYPE and got.tolist() == [7, 2 ** 32 - 1]
    assert keys.hex_keys([b"\x01\xff"]) == ["01ff"]


def test_a_store_refuses_bad_tokens_before_anything_is_written(store):
    with pytest.raises(TokensError, match="must be integers"):
        store.lookup(np.array([1, None] * 40, dtype=object))
    assert store.stats().chunks == 0


def test_a_salt_that_is_not_utf8_text_or_bytes_is_refused():
    with pytest.raises(InputError, match="salt is not encodable as UTF-8"):
        keys.salt_digest("tenant-\ud800")
    with pytest.raises(InputError, match="salt must be str, bytes or None, got int"):
        keys.salt_digest(16)
    assert keys.salt_digest("t1") == keys.salt_digest(b"t1") == keys.salt_digest(memoryview(b"t1"))
    assert keys.salt_digest(b"") is None


def test_chunk_keys_refuse_a_chunk_size_that_is_not_positive():
    toks = keys.as_tokens(list(range(64)))
    with pytest.raises(InputError, match="chunk_tokens must be positive, got 0"):
        keys.chunk_keys(b"root", toks, 0)
    assert len(keys.chunk_keys(b"root", toks, 32)) == 2


# --- sizes.py --------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, match", [
    (True, "must be a number of bytes or a string like '20GiB', got True"),
    (2.5, "must be an int or a string like '20GiB', got float"),
    (None, "must be an int or a string like '20GiB', got NoneType"),
    (1 << 61, "is larger than the 1152921504606846976 bytes allowed"),
    ("2000000TiB", "is larger than the"),
])
def test_a_size_that_is_not_one_is_a_size_error(value, match):
    with pytest.raises(SizeError, match=match):
        sizes.parse_size(value, "capacity")


@pytest.mark.parametrize("value, match", [
    (False, "must be seconds or a string like '30m', got False"),
    ([30], "must be seconds or a string like '24h', got list"),
    ("101000d", "must be at most 3153600000 seconds"),
    (4e9, "must be at most 3153600000 seconds"),
    (float("inf"), "must be a finite number of seconds"),
])
def test_a_duration_that_is_not_one_is_a_size_error(value, match):
    with pytest.raises(SizeError, match=match):
        sizes.parse_duration(value, "ttl")


# --- policy.py ---------------------------------------------------------------------------------------
def test_an_unknown_policy_or_a_bad_horizon_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown eviction policy 'lfu'; choose one of lru, cost"):
        kv.Bucket(tmp_path / "b", capacity="1GiB", policy="lfu")
    for bad in (0, -5, float("nan"), float("inf"), "8192", None, True):  # NaN would make every priority NaN
        with pytest.raises(InputError, match="attention_tokens must be a positive number of tokens"):
            policy.CostAware(attention_tokens=bad)
    mine = policy.CostAware(attention_tokens=1024)
    assert policy.make_policy(mine) is mine  # an instance is used as given
    with kv.Bucket(tmp_path / "c", capacity="1GiB", policy=mine) as b:
        assert b.policy is mine


# --- recorder.py --------------------------------------------------------------------------------------
def test_a_history_file_that_is_not_a_database_never_stops_serving(tmp_path, caplog):
    bucket = tmp_path / "b"
    with open_store(str(bucket)) as s:
        toks, cache, ids = sequence(1)
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96
    (bucket / recorder.FILENAME).write_bytes(b"this is not an sqlite file at all" * 100)
    with open_store(str(bucket)) as s:  # the store opens and serves; sizing alone is off
        assert s.put(toks, kv.PagedKV(cache, "BHTC"), ids) == 96 and s.lookup(toks) == 96
    assert "cannot record accesses" in caplog.text
    with pytest.raises(sqlite3.DatabaseError):
        recorder.read_totals(bucket)


def test_a_flush_refused_inside_its_transaction_rolls_back_and_the_next_one_lands(tmp_path, caplog):
    # A crafted history file: a trigger refuses inserts, inside the flush's open transaction.
    r = Recorder(tmp_path)
    try:
        with sqlite3.connect(r.path) as other:
            other.execute("CREATE TRIGGER refuse BEFORE INSERT ON accesses BEGIN SELECT RAISE(ABORT, 'refused'); END")
        r.record(STREAM, 64, b"\x01" * 16, t=1000.0)
        assert r.flush() == 0
        assert "dropped 1 recorded accesses (refused)" in caplog.text
        other = sqlite3.connect(r.path, timeout=5)
        other.execute("DROP TRIGGER refuse")
        other.close()
        r.record(STREAM, 64, b"\x02" * 16, t=2000.0)
        assert r.flush() == 1  # the failed transaction was rolled back: the connection is usable
    finally:
        r.close()
    got = list(recorder.read_accesses(tmp_path))
    assert [(a.t, a.keys) for a in got] == [(2000.0, b"\x02" * 16)]  # its stream row exists (not a stale id)
    assert recorder.read_totals(tmp_path).puts == 1


def test_records_beyond_the_pending_bound_are_dropped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder, "MAX_PENDING", 3)  # a stuck disk, in small: the bound, not 200,000 rows
    monkeypatch.setattr(recorder, "FLUSH_SECONDS", 3600)
    r = Recorder(tmp_path)
    try:
        for i in range(5):
            r.record(STREAM, 64, bytes([i]) * 16, t=1000.0 + i)
        r.record(STREAM, 64, b"", t=1.0)  # no chain: nothing to record
        assert r.dropped == 2
        assert r.flush() == 3
    finally:
        r.close()
    r.close()  # twice: harmless
    r.record(STREAM, 64, b"\x09" * 16)  # after close: ignored, never raised
    assert [a.t for a in recorder.read_accesses(tmp_path)] == [1000.0, 1001.0, 1002.0]


def test_a_full_batch_wakes_the_flusher_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder, "FLUSH_ROWS", 4)
    monkeypatch.setattr(recorder, "FLUSH_SECONDS", 3600)  # without the wake-up, nothing before an hour
    r = Recorder(tmp_path)
    try:
        for i in range(4):
            r.record(STREAM, 64, bytes([i]) * 16, t=1000.0 + i)
        deadline = __import__("time").monotonic() + 30
        while recorder.read_totals(tmp_path).puts < 4 and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.02)
        assert recorder.read_totals(tmp_path).puts == 4
    finally:
        r.close()


def test_clear_forgets_everything_and_reading_nothing_is_empty(tmp_path):
    assert list(recorder.read_accesses(tmp_path)) == [] and recorder.read_totals(tmp_path) is None
    recorder.clear(tmp_path)  # nothing recorded: nothing to do, no file made
    assert not (tmp_path / recorder.FILENAME).exists()
    r = Recorder(tmp_path)
    r.record(STREAM, 64, b"\x01" * 16, t=1000.0)
    r.close()
    assert recorder.read_totals(tmp_path).puts == 1
    recorder.clear(tmp_path)
    t = recorder.read_totals(tmp_path)
    assert (t.puts, t.chunks, t.tokens, t.kept_bytes, t.lookups, t.first) == (0, 0, 0, 0, 0, None)
    assert list(recorder.read_accesses(tmp_path)) == []


def test_a_process_that_exits_without_closing_still_writes_what_it_recorded(tmp_path):
    code = ("import sys, pykvstore.recorder as r\n"
            "rec = r.Recorder(sys.argv[1])\n"
            "rec.record(r.Stream('m', 't', 'ab' * 16, 32, 4096), 64, b'\\x05' * 16, t=1234.0)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120, env=env)
    assert [(a.t, a.keys) for a in recorder.read_accesses(tmp_path)] == [(1234.0, b"\x05" * 16)]


# --- chunk_file.py --------------------------------------------------------------------------------------
def test_the_cache_of_sound_params_stays_bounded():
    for i in range(1100):
        chunk_file._check_params(json.dumps({"i": i}))
    assert 0 < len(chunk_file._sound_params) <= 1024


# --- transfer.py: the non-GPU fallbacks ----------------------------------------------------------------
def test_no_copy_engine_without_a_usable_cuda_device():
    assert transfer.copy_engine(torch.device("cpu")) is None
    if not kv._C.cuda_compiled or torch.cuda.is_available():
        pytest.skip("needs an extension built with CUDA on a machine without a device")
    assert transfer.copy_engine(torch.device("cuda", 0)) is None  # the engine refused: callers fall back
    assert transfer.copy_engine(torch.device("cuda", 0)) is None  # and the refusal is remembered


def test_copy_counts_name_every_path_and_count_each_copy():
    before = transfer.copy_counts()
    assert set(before) == {f"{d}_{p}" for d in ("gather", "scatter") for p in transfer.COPY_PATHS}
    transfer.count_copy("gather", "torch")
    after = transfer.copy_counts()
    assert after["gather_torch"] == before["gather_torch"] + 1
    assert {k: v for k, v in after.items() if k != "gather_torch"} == \
        {k: v for k, v in before.items() if k != "gather_torch"}


# --- integrations/transformers.py ---------------------------------------------------------------------
def test_a_config_that_describes_no_attention_kv_is_refused():
    from pykvstore.integrations import transformers as tf

    with pytest.raises(InputError, match="config does not describe an attention model's KV"):
        tf.geometry_of(types.SimpleNamespace(hidden_size=64), torch.float32)


def test_caches_transformers_would_not_produce_are_refused(store):
    from pykvstore.integrations import transformers as tf

    toks = list(range(64))
    layer = types.SimpleNamespace(keys=torch.zeros(1, 2, 64, 8), values=None)
    with pytest.raises(InputError, match="expected a transformers DynamicCache, got list"):
        tf.save_prefix(store, toks, [])
    with pytest.raises(InputError, match="layer 0 of the cache holds no"):
        tf.save_prefix(store, toks, types.SimpleNamespace(layers=[layer]))
    layer = types.SimpleNamespace(keys=torch.zeros(2, 2, 64, 8), values=torch.zeros(2, 2, 64, 8))
    with pytest.raises(InputError, match="only batch 1 is supported, the cache has batch 2"):
        tf.save_prefix(store, toks, types.SimpleNamespace(layers=[layer]))
    assert store.stats().chunks == 0


def test_a_prompt_shorter_than_a_chunk_saves_and_loads_nothing(store):
    transformers = pytest.importorskip("transformers")
    from pykvstore.integrations import transformers as tf

    config = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      hidden_size=32, head_dim=16)
    layer = types.SimpleNamespace(keys=torch.ones(1, 2, 20, 16), values=torch.ones(1, 2, 20, 16))
    cache = types.SimpleNamespace(layers=[layer, layer])
    assert tf.save_prefix(store, list(range(20)), cache) == 0  # 20 tokens: no full chunk of 32
    assert store.stats().chunks == 0
    restored, n = tf.load_prefix(store, list(range(20)), config)
    assert n == 0 and restored.get_seq_length() == 0
