"""Test helper: put blobs into a store in a loop, acknowledging each on stdout.

``python cas_writer.py STORE SEED [COUNT]``. Blob ``i`` is derived from the seed,
so a test can predict every blob; each line printed is a put that returned.
"""

from __future__ import annotations

import random
import sys

from tufmesh.cas import BlobStore


def blob(seed: int, index: int) -> bytes:
    rng = random.Random(seed * 1_000_003 + index)
    return rng.randbytes(rng.randrange(1, 4 << 20))


def main() -> None:
    store = BlobStore(sys.argv[1])
    seed = int(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    for index in range(count):
        data = blob(seed, index)
        if index % 3 == 0:
            cid, _ = store.put_chunked(data, chunk_size=1 << 20)
        elif index % 3 == 1:
            cid = store.put(iter([data[: len(data) // 2], data[len(data) // 2 :]]))
        else:
            cid = store.put(data)
        # One write, so a kill never leaves half a line: print() writes each
        # piece on its own when stdout is unbuffered (PYTHONUNBUFFERED).
        sys.stdout.write(f"{index} {cid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
