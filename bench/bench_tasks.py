"""
The task functions bench/pytasks.py measures, loaded by its workers with
``--tasks bench_tasks`` (bench/ on their PYTHONPATH).

With ``TASKMESH_BENCH_CODEC=msgspec`` in the environment, importing this
module swaps the JSON codec under taskmesh's encoding functions for
msgspec's (in the workers, and in the benchmark's client, which imports it
too), so that the two codecs are compared end to end through the same code;
taskmesh itself always uses the standard library's json.
"""

from __future__ import annotations

import os

import taskmesh
import taskmesh.codec


@taskmesh.task(blocking=False)
def noop(x: int, y: int) -> None:
    """Two small arguments, no work, run inline: what the JSON layer costs beside sha256."""


@taskmesh.task
def noop_thread(x: int, y: int) -> None:
    """The same in the thread pool (a plain function's default)."""


def use_msgspec() -> None:
    import msgspec

    encoder = msgspec.json.Encoder()
    decoder = msgspec.json.Decoder()
    # taskmesh.codec calls _encode(value).encode("ascii") and _decode(text):
    # these only carry ASCII here, as the benchmark's arguments are numbers.
    taskmesh.codec._encode = lambda value: encoder.encode(value).decode("ascii")  # type: ignore[assignment]
    taskmesh.codec._decode = decoder.decode  # type: ignore[assignment]


if os.environ.get("TASKMESH_BENCH_CODEC") == "msgspec":
    use_msgspec()
