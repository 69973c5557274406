"""Correctness leftovers of the reviews: bools as tokens, a catalog row no chunk path can be
derived for, and a failed or uncommitted write deleting another writer's file.

Each test failed before its fix. Faults are real (a crafted catalog row, a second store on
the bucket, the engine's own write-fault switch); a pause hook only times them.
"""

from __future__ import annotations

import numpy as np
import pytest

import pykvstore as kv
from pykvstore.keys import as_tokens


# --- 1. bools are not token ids --------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    [True, False], [1, True], (True, 2), [5, False, 7], [np.True_, 1], (np.bool_(False), 3),
    np.array([True, False]), np.array([1, True], dtype=object), np.array([True, 2**40], dtype=object),
])
def test_bools_are_refused_as_tokens_in_every_form(bad):
    """A list or tuple mixing bools with ints became int64 in numpy and was taken (True as
    token 1), where an object array holding the same items was refused: bools are not token
    ids in any form, and the error says so."""
    with pytest.raises(kv.TokensError, match="bool"):
        as_tokens(bad)


def test_ints_beside_the_bool_check_still_convert():
    """What the bool check must not refuse: numpy ints in a list (the generic path), plain
    ints (the native path), 0 and 1 included."""
    assert as_tokens([0, 1, 2]).tolist() == [0, 1, 2]
    assert as_tokens([np.int64(1), 0, np.uint32(7)]).tolist() == [1, 0, 7]
    assert as_tokens(np.array([1, 0, 2**40 - 2**40 + 5], dtype=object)).tolist() == [1, 0, 5]
