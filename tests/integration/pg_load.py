"""
A load for the PostgreSQL store's integration test, in a process of its own:
``python pg_load.py ADDRESS FOLDER THREADS``.

THREADS loops each enqueue sha256 tasks ("load-T-N") through one blocking
client, printing ``ok ID TEXT`` for each acknowledgement and ``refused
REASON`` for each refusal, until the file FOLDER/stop-load appears (bounded:
at most ``RUN_LIMIT`` seconds).  Then it fetches the result of every
acknowledged task by id and prints one JSON line: how many were
acknowledged, refused, lost (no result) and wrong (another result).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import taskmesh
from taskmesh.errors import TaskRejected

WAIT = 60.0
RUN_LIMIT = 120.0


def main() -> None:
    address, folder, threads = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    stop = folder / "stop-load"
    client = taskmesh.connect(address, wait_timeout=WAIT)
    acknowledged: dict[int, str] = {}
    refused = 0
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + RUN_LIMIT

    def loop(number: int) -> None:
        nonlocal refused
        count = 0
        while not stop.exists() and time.monotonic() < deadline:
            text = f"load-{number}-{count}"
            count += 1
            try:
                task_id = client.enqueue(text)
            except TaskRejected as e:
                with lock:
                    refused += 1
                    print(f"refused {e}", flush=True)
                time.sleep(0.01)  # a refused client backs off a little, as a real one would
                continue
            except Exception as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                    print(f"error {type(e).__name__}: {e}", flush=True)
                continue
            with lock:
                acknowledged[task_id] = text
                print(f"ok {task_id} {text}", flush=True)

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(RUN_LIMIT + WAIT)
    lost: list[int] = []
    wrong: list[int] = []
    for task_id, text in sorted(acknowledged.items()):
        try:
            value = client.result(task_id)
        except Exception as e:
            lost.append(task_id)
            print(f"lost {task_id}: {type(e).__name__}: {e}", flush=True)
            continue
        if bytes(value).decode() != hashlib.sha256(text.encode()).hexdigest():
            wrong.append(task_id)
    client.close()
    summary = {
        "acknowledged": len(acknowledged),
        "refused": refused,
        "errors": errors[:5],
        "lost": lost,
        "wrong": wrong,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
