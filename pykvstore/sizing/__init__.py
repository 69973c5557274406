"""Hit rate vs capacity from a bucket's recorded puts, and the size to buy.

Runs wherever the owner runs `pykvstore size` or the dashboard: pure Python and
numpy, no torch, no engine. Input is the access history (recorder.py): one
chain of chunk keys per put, root first.

LRU, exactly (Mattson). With pykvstore's LRU every put touches its whole chain
and evicts leaves by (last access, deeper first). A prefix is therefore never
less recent than any chunk chained after it, so the least recent chunk is
always a leaf and "LRU over leaves" is plain LRU over a total order in which a
put's root is its most recent chunk and its tail the least. Plain LRU has the
stack property even for chunks of different sizes: a chunk is resident in a
bucket of C bytes exactly when the bytes of distinct chunks used since its
last use, itself included, are at most C (evictions always take the bottom of
the stack, and what lies above a chunk only grows). One pass computes every
chunk access's distance with a Fenwick tree over access positions holding
each chunk's size at its latest position; the put's distances are all taken
against the state before the put, then its chain is pushed tail first, root
last. The resident set is prefix-closed (a chunk's prefix is above it), so a
chunk counts as a hit at capacity C when the largest distance along its chain
up to it is <= C; that running maximum is what each access contributes.

Beyond `exact_limit` chunk accesses, SHARDS: only chunks whose key (already a
uniform hash) falls under a threshold R are followed, their sizes and
distances scaled by 1/R. Sampling by chunk rather than by chain root is
deliberate: the prefix property above makes a chunk's own distance decide its
residency, while a Zipf workload of a few dozen system prompts has so few
roots that sampling by root would keep or drop most of the traffic at once.

Cost-aware: no stack property, so the recorded stream is replayed at each
capacity asked for, against an in-memory catalog and pykvstore.policy's own
CostAware (the bucket's eviction code, not a model of it). Beyond
`simulate_limit` chunk accesses, a miniature simulation at capacity C x R of
the chunks sampled as above, each chained to its nearest sampled ancestor
(so tails still go first) and keeping its real position for the cost.

Which thread: all of it runs on the caller's (the CLI's or dashboard's).
"""

from .lru import EXACT_LIMIT, Profile, lru_profile
from .replay import SIMULATE_LIMIT, simulate
from .report import (MONTH, Row, SizingError, SizingReport, check_price, format_report, knee, nice_size,
                     parse_capacities, size, would_have_served)

__all__ = ["EXACT_LIMIT", "MONTH", "Profile", "Row", "SIMULATE_LIMIT", "SizingError", "SizingReport", "check_price",
           "format_report", "knee", "lru_profile", "nice_size", "parse_capacities", "simulate", "size",
           "would_have_served"]
