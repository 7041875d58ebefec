"""What the fault and cluster tests share: free ports, psql, and a write load
that remembers which creates were acknowledged. Needs the Python stubs
(examples/python/gen) on sys.path."""

import socket
import subprocess
import threading
import time

import grpc
from blog.posts.v1 import posts_pb2, posts_pb2_grpc


def free_port():
    """A port nothing holds now. Fixed ports in the ephemeral range can be
    taken by any outgoing connection (a database pool's, say) at any time."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(sql, db="test"):
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


class Load:
    """Creates posts at `addr` as fast as it can with `token`, remembering
    which were acknowledged and counting every answer by code. After an
    UNAVAILABLE it opens a new channel."""

    def __init__(self, addr, token):
        self.addr, self.token = addr, token
        self.acknowledged = []
        self.codes = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            channel = grpc.insecure_channel(self.addr)
            stub = posts_pb2_grpc.PostServiceStub(channel)
            try:
                while not self.stop.is_set():
                    try:
                        post = stub.CreatePost(
                            posts_pb2.CreatePostRequest(title="load", content="x"),
                            metadata=[("authorization", f"Bearer {self.token}")],
                            timeout=5,
                        )
                        self.acknowledged.append(post.id)
                        name = "OK"
                    except grpc.RpcError as error:
                        name = error.code().name
                        time.sleep(0.02)
                    self.codes[name] = self.codes.get(name, 0) + 1
                    if name == "UNAVAILABLE":
                        break
            finally:
                channel.close()

    def oks(self):
        return self.codes.get("OK", 0)

    def stored(self, db):
        """How many of the acknowledged creates are in the posts database `db`."""
        if not self.acknowledged:
            return 0
        ids = ",".join(map(str, self.acknowledged))
        return int(psql(f"SELECT count(*) FROM posts WHERE id IN ({ids})", db))

    def all_stored(self, db):
        return self.stored(db) == len(set(self.acknowledged))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(10)
