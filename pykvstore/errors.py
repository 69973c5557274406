"""Exceptions a developer calling the API sees. The serving path never raises
for a damaged or missing chunk: that is a miss."""


class InputError(ValueError):
    """Bad input to a public call, raised before anything is written."""


class LayoutError(InputError):
    """A dims string or engine tensors that do not describe a paged KV cache."""


class TokensError(InputError):
    """Tokens that are not a 1-D sequence of non-negative integers below 2**32."""


class BlockIdsError(InputError):
    """Block ids out of range, not integers, or too few for the tokens."""


class SizeError(InputError):
    """A size (capacity) or duration (TTL) that does not parse."""


class ConfigError(InputError):
    """A bucket.json that is not a valid bucket configuration (the message says what and how to fix it)."""


class ChunkError(Exception):
    """A chunk file that cannot be trusted: bad header, wrong chunk, bad checksum.

    Internal: the store turns it into a miss and moves the file aside.
    """
