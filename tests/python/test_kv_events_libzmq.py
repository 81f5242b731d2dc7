"""The gateway following a KV-event publisher built the way vLLM builds it — libzmq (pyzmq)
sockets and msgpack-python payloads — rather than on sluice's own Rust code: a late join
replayed from sequence 0, both event encodings, 64-bit hashes above i64's range, a lost
batch replayed, and an engine restart purged. Seen through the gateway's /metrics.
"""

import os
import re
import struct
import tempfile
import threading
import time
import urllib.request

import msgpack
import zmq

from sluice_process import Process

BLOCK = 16
END = b"\xff" * 8


class Engine:
    """vLLM's publisher: PUB `[topic, seq, payload]`, and a ROUTER replaying its buffer."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.events = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.router = self.ctx.socket(zmq.ROUTER)
        self.replay = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        self.buffer = []
        self.seq = 0
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self.serve_replays, daemon=True)
        self.thread.start()

    def publish(self, events, live=True):
        payload = msgpack.packb([time.time(), events, 0])
        with self.lock:
            seq = self.seq
            self.seq += 1
            self.buffer.append((seq, payload))
        if live:
            self.pub.send_multipart([b"", struct.pack(">Q", seq), payload])

    def restart(self):
        with self.lock:
            self.seq = 0
            self.buffer = []

    def serve_replays(self):
        while self.running:
            if not self.router.poll(100):
                continue
            identity, empty, start = self.router.recv_multipart()
            start = struct.unpack(">Q", start)[0]
            with self.lock:
                batches = [(s, p) for s, p in self.buffer if s >= start]
            for seq, payload in batches:
                self.router.send_multipart([identity, b"", b"", struct.pack(">Q", seq), payload])
            self.router.send_multipart([identity, b"", b"", END, b""])

    def close(self):
        self.running = False
        self.thread.join(2)
        self.ctx.destroy(linger=0)


def stored(hashes, parent, first_token):
    tokens = list(range(first_token, first_token + BLOCK * len(hashes)))
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent,
            "token_ids": tokens, "block_size": BLOCK, "lora_id": None, "medium": "GPU",
            "lora_name": None}


def stored_legacy(hashes, parent, first_token):
    tokens = list(range(first_token, first_token + BLOCK * len(hashes)))
    return ["BlockStored", hashes, parent, tokens, BLOCK, None, "GPU"]


def removed(hashes):
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": "GPU"}


def metric(url, name, **labels):
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and m.group(1) == want:
            return float(m.group(2))
    return None


def eventually(check, what, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def test_the_gateway_follows_a_libzmq_publisher():
    engine = Engine()
    mock = Process(["mock", "--listen", "127.0.0.1:0", "--zero-timing"])
    big = 2**64 - 5  # above i64::MAX: msgpack writes it as uint64
    # Published before the gateway exists: only the replay has these.
    engine.publish([stored([big, 2], None, 0)])
    engine.publish([stored_legacy([3], 2, 32)])
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "sluice.toml")
        with open(config, "w") as f:
            f.write(
                '[server]\nlisten = "127.0.0.1:0"\n[models.m]\n[[models.m.endpoints]]\n'
                f'name = "vllm-0"\nurl = "{mock.url}/v1"\n'
                f'kv_events = "{engine.events}"\nkv_replay = "{engine.replay}"\n'
                '[models.m.routing]\npolicy = "prefix_aware"\ntokenizer = "mock"\n'
            )
        gateway = Process(["serve", "--config", config])
        try:
            url = gateway.url
            pod = {"model": "m", "pod": "vllm-0"}

            def blocks():
                return metric(url, "sluice_prefix_index_blocks", model="m")

            def stream(kind):
                return metric(url, "sluice_kv_stream_events_total", **pod, kind=kind)

            eventually(lambda: blocks() == 3, "the three replayed blocks indexed")
            # The live subscription takes a moment to reach the publisher: publish an event
            # of a type the gateway does not know until one arrives.
            def live():
                engine.publish([{"type": "SomethingNew", "detail": [1, {"x": None}]}])
                return (metric(url, "sluice_kv_events_total", **pod, kind="ignored") or 0) >= 1
            eventually(live, "a live batch received")

            # Lost on the way (the publisher's queue was full): replayed when the next arrives.
            # A live batch published while the subscription was still taking is a gap too
            # (and replayed), so the count is compared with what it was before.
            # The gap is counted before the replay is asked for, and the index holds three
            # blocks before the gap too ({big, 2, 3}): wait for the replayed removal and the
            # live store after it ({big, 2, 4}); without the replay it would be four.
            gaps = stream("gap") or 0
            engine.publish([removed([3])], live=False)
            engine.publish([stored([4], 2, 48)])

            def replayed():
                removals = metric(url, "sluice_kv_events_total", **pod, kind="block_removed")
                stores = metric(url, "sluice_kv_events_total", **pod, kind="block_stored")
                return stream("gap") == gaps + 1 and removals == 1 and stores == 3

            eventually(replayed, "the gap replayed and the live batch applied after it")
            assert blocks() == 3

            # A new engine process: sequence numbers from 0.
            engine.restart()
            engine.publish([stored([9], None, 100)])
            eventually(lambda: stream("purge") == 1 and blocks() == 1, "the restart purged")
            assert stream("decode_error") == 0
            assert metric(url, "sluice_kv_connected", **pod) == 1
        finally:
            gateway.stop()
            mock.stop()
            engine.close()
