"""The bounds of an entry's text fields, one definition each, for the Milvus schema, the store's
keys and the API's checks. Milvus counts a VARCHAR's ``max_length`` in bytes of UTF-8, so every
check here counts bytes too (a label of 100 Chinese characters is 300 bytes)."""

from __future__ import annotations

KEY_MAX_BYTES = 1024  # an object-store key (S3's own limit)
LABEL_MAX_BYTES = 256
SOURCE_MAX_BYTES = 2048  # where an image came from: a path, a bucket key, a URL
TEXT_MAX_CHARS = 1000  # a search by words (the text tower keeps its context length's tokens of it)


def utf8_len(text: str) -> int:
    return len(text.encode())
