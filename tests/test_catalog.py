import pytest

from pykvstore.catalog import READY, WRITING, Catalog, ChunkRow


def row(key, parent, i, state=READY, nbytes=100, last_access=0.0):
    return ChunkRow(key=key, parent=parent, namespace="ns", model="m", chunk_index=i, tokens=32, nbytes=nbytes,
                    path=f"data/{key}", created=0.0, last_access=last_access, state=state)


@pytest.fixture
def cat(tmp_path):
    c = Catalog(str(tmp_path / "catalog.sqlite"))
    yield c
    c.close()


def chain(n, prefix="k"):
    keys = [f"{prefix}{i:05d}" for i in range(n)]
    return keys, [row(k, keys[i - 1] if i else "ns", i, last_access=float(i)) for i, k in enumerate(keys)]


@pytest.mark.parametrize("gap", [0, 1, 499, 500, 501, 999, 1199, None])
def test_prefix_length_across_query_batches(cat, gap):
    keys, rows = chain(1200)
    cat.insert_many(r for i, r in enumerate(rows) if i != gap)
    expected = 1200 if gap is None else gap
    assert cat.ready_prefix_len(keys, 1.0) == expected
    assert [r.key for r in cat.ready_prefix(keys, 1.0)] == keys[:expected]


def test_writing_rows_are_not_ready_but_are_counted(cat):
    keys, rows = chain(3)
    rows[2].state = WRITING
    cat.insert_many(rows)
    assert cat.ready_prefix_len(keys, 1.0) == 2
    assert cat.usage() == (300, 3)
    assert cat.mark_ready(keys[2], 1.0) and cat.ready_prefix_len(keys, 1.0) == 3
    assert not cat.mark_ready(keys[2], 1.0)  # only a writing row can be committed


def test_totals_follow_inserts_and_deletes(cat):
    keys, rows = chain(10)
    cat.insert_many(rows)
    with cat.transaction() as c:
        assert not Catalog.insert(c, rows[0])  # a key has one row
        Catalog.delete(c, keys[5:])
    assert cat.usage() == (500, 5)


def test_leaves_and_subtrees(cat):
    keys, rows = chain(4)
    other, orows = chain(2, "b")
    branch = row("z", keys[1], 2, last_access=-1.0)  # a second child of chunk 1, least recently used
    cat.insert_many(rows + orows + [branch])
    with cat.transaction() as c:
        assert [r.key for r in Catalog.leaves(c, "last_access", 10)] == ["z", other[1], keys[3]]
        assert sorted(r.key for r in Catalog.subtree(c, [keys[1]])) == sorted(keys[1:] + ["z"])
        assert [r.key for r in Catalog.subtree(c, [other[0]])] == other
        c.execute("ROLLBACK")
        c.execute("BEGIN")  # keep the context manager's COMMIT valid


def test_a_rollback_undoes_everything(cat):
    keys, rows = chain(3)
    cat.insert_many(rows)
    with pytest.raises(RuntimeError):
        with cat.transaction() as c:
            Catalog.delete(c, keys)
            raise RuntimeError("boom")
    assert cat.ready_prefix_len(keys, 1.0) == 3 and cat.usage() == (300, 3)


def test_expired_rows_are_never_ready(cat):
    keys, rows = chain(3)
    rows[1].expires = 100.0
    cat.insert_many(rows)
    assert cat.ready_prefix_len(keys, 99.0) == 3
    assert cat.ready_prefix_len(keys, 100.0) == 1  # expired at 100: not served, reclaimed or not
    assert set(cat.existing(keys, 100.0)) == {keys[0], keys[2]}
    with cat.transaction() as c:
        assert [r.key for r in Catalog.expired(c, 100.0)] == [keys[1]]


def test_sliding_ttl_moves_on_touch_and_pins_hide_leaves(cat):
    keys, rows = chain(2)
    rows[1].expires, rows[1].sliding_ttl = 50.0, 30.0
    cat.insert_many(rows)
    with cat.transaction() as c:
        Catalog.touch(c, keys, 40.0)
        Catalog.set_pinned(c, [keys[1]], True)
        assert Catalog.leaves(c, "last_access", 10) == []  # the pinned tail keeps its prefix too
    assert cat.rows("key = ?", (keys[1],))[0].expires == 70.0
    assert cat.rows("key = ?", (keys[0],))[0].expires is None


def test_counters_add_up_across_periods(cat):
    with cat.transaction() as c:
        Catalog.count(c, "m", {"hit_tokens": 5, "miss_tokens": 0}, 1000.0)
        Catalog.count(c, "m", {"hit_tokens": 7}, 1000.0 + 3600)
    assert cat.counters() == {"m": {"hit_tokens": 12}}
    assert cat.counters(since=1000.0 + 3500) == {"m": {"hit_tokens": 7}}
    cat.prune_counters(2000.0)
    assert cat.counters(since=0.0) == {"m": {"hit_tokens": 7}} and cat.counters() == {"m": {"hit_tokens": 12}}
