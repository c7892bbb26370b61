#!/usr/bin/env python3
"""What one stored subject costs nats-server in memory (ARCHITECTURE.md, the waiting room's
per-tenant subjects).

Starts a nats-server with JetStream in a scratch directory, stores N messages of 600 bytes in
a stream shaped like WEBHOOK_WAITING, spread over SUBJECTS subjects
(`webhooks.waiting.<one of 1,600 buckets>.tenant<k>`), and prints the server's resident memory
before and after. Compare two runs with the same N:

    pip install nats-py
    python3 bench/subject_memory.py "$(scripts/nats-server.sh)" 200000 1600
    python3 bench/subject_memory.py "$(scripts/nats-server.sh)" 200000 200000
"""

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time

import nats
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

PORT = 14333


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


async def fill(pid, n, subjects):
    nc = await nats.connect(f"nats://127.0.0.1:{PORT}")
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="W",
            subjects=["webhooks.waiting.>"],
            storage=StorageType.FILE,
            max_bytes=4 << 30,
            discard=DiscardPolicy.NEW,
        )
    )
    before = rss_kib(pid)
    body = b"x" * 600
    pending = []
    for i in range(n):
        s = i % subjects
        bucket = 1_800_000_000_000 + (s % 1600) * 250
        pending.append(js.publish(f"webhooks.waiting.{bucket}.tenant{s // 1600}", body))
        if len(pending) >= 500:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    await asyncio.sleep(5)
    after = rss_kib(pid)
    info = await js.stream_info("W")
    print(
        f"messages={info.state.messages} subjects={min(n, subjects)} "
        f"rss_before={before // 1024}MiB rss_after={after // 1024}MiB"
    )
    await nc.close()


def main():
    binary, n, subjects = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = tempfile.mkdtemp(prefix="subject-memory-")
    server = subprocess.Popen(
        [binary, "-js", "-sd", store, "-p", str(PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        asyncio.run(fill(server.pid, n, subjects))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
