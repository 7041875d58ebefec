#!/usr/bin/env python3
"""Fault tests against the release binary, on PostgreSQL, as separate processes.

1. PostgreSQL stopped in the middle of a write load: while it is down the
   services answer UNAVAILABLE and report NOT_SERVING; when it returns they
   recover on their own; every create that was acknowledged is in the database.
2. kill -9 of each service in the middle of a load, then a restart: no
   acknowledged write is lost, and the user events that happened meanwhile are
   applied exactly once (the posts-service's cursor matches the auth outbox,
   and a deleted user's posts are gone).
"""

import os
import secrets
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples", "python", "gen"))

import grpc  # noqa: E402
from blog.auth.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc  # noqa: E402
from blog.posts.v1 import posts_pb2, posts_pb2_grpc  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import Load, free_port, psql  # noqa: E402

BINARY = os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "blog")
CLUSTER = os.listdir("/etc/postgresql")[0]
SUFFIX = secrets.token_hex(4)
DBS = {"auth": f"auth_fault_{SUFFIX}", "posts": f"posts_fault_{SUFFIX}"}
PG = "postgres://postgres@127.0.0.1:5432"


AUTH, POSTS = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
WORK = f"/tmp/blog-fault-{SUFFIX}"
ENV = dict(
    os.environ,
    AUTH_LISTEN_ADDR=AUTH,
    AUTH_HTTP_ADDR="127.0.0.1:8091",
    POSTS_LISTEN_ADDR=POSTS,
    POSTS_HTTP_ADDR="127.0.0.1:8092",
    AUTH_SERVICE_URL=f"http://{AUTH}",
    AUTH_DATABASE_URL=f"{PG}/{DBS['auth']}",
    POSTS_DATABASE_URL=f"{PG}/{DBS['posts']}",
    AUTH_DB_ACQUIRE_TIMEOUT_SECS="2",
    POSTS_DB_ACQUIRE_TIMEOUT_SECS="2",
    INTERNAL_TOKEN="fault-" + SUFFIX,
    DATA_DIR=WORK,
    RUST_LOG="warn",
    # The load writes as fast as it can, as one user: far past the default
    # per-user write quota, which is not what these tests are about.
    POST_WRITES_PER_HOUR="10000000",
    POST_WRITE_BURST="100000",
)
PROCESSES = {}


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    for name in PROCESSES:
        path = f"{WORK}/{name}.log"
        if os.path.exists(path):
            print(f"--- {name}", file=sys.stderr)
            print(open(path).read()[-3000:], file=sys.stderr)
    sys.exit(1)


def pg(action):
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", CLUSTER, "main", action], check=True,
                   capture_output=True)


def start(service):
    log = open(f"{WORK}/{service}.log", "a")
    PROCESSES[service] = subprocess.Popen([BINARY], env=dict(ENV, BLOG_SERVICES=service), stdout=log, stderr=log)


def healthy(service):
    env = dict(ENV, BLOG_SERVICES=service)
    return subprocess.run([BINARY, "healthcheck"], env=env, capture_output=True).returncode == 0


def wait_for(what, condition, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    fail(f"waited {seconds} s for {what}")


def user(name):
    channel = grpc.insecure_channel(AUTH)
    users, auth = users_pb2_grpc.UserServiceStub(channel), auth_pb2_grpc.AuthServiceStub(channel)
    password = f"{name}-fault-{SUFFIX}"
    created = users.CreateUser(users_pb2.CreateUserRequest(
        username=f"{name}_{SUFFIX}", email=f"{name}_{SUFFIX}@example.com", password=password))
    token = auth.Login(auth_pb2.LoginRequest(username_or_email=created.username, password=password)).access_token
    return created, token, password


def main():
    os.makedirs(WORK, exist_ok=True)
    for db in DBS.values():
        psql(f"CREATE DATABASE {db}")
    try:
        start("auth")
        wait_for("auth to serve", lambda: healthy("auth"))
        start("posts")
        wait_for("posts to serve", lambda: healthy("posts"))
        alice, token, _ = user("alice")

        # 1. PostgreSQL goes away mid-load and comes back.
        with Load(POSTS, token) as load:
            time.sleep(1.5)
            pg("stop")
            try:
                wait_for("UNAVAILABLE answers", lambda: load.codes.get("UNAVAILABLE", 0) > 0, 20)
                wait_for("NOT_SERVING", lambda: not healthy("posts"), 20)
                print("ok: database down -> UNAVAILABLE and NOT_SERVING")
            finally:
                pg("start")
                wait_for("PostgreSQL to return",
                         lambda: subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode == 0)
            wait_for("posts to serve again", lambda: healthy("posts"), 60)
            before = len(load.acknowledged)
            wait_for("writes to succeed again", lambda: len(load.acknowledged) > before + 5, 30)
            print("ok: recovered without a restart")
        other = set(load.codes) - {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
        if other:
            fail(f"unexpected codes during the outage: {load.codes}")
        if not load.all_stored(DBS["posts"]):
            fail("an acknowledged create is missing after the outage")
        print(f"ok: all {len(load.acknowledged)} acknowledged creates stored ({load.codes})")

        # 2. kill -9 of the posts-service mid-load, then restart.
        with Load(POSTS, token) as load:
            time.sleep(1.0)
            PROCESSES["posts"].send_signal(signal.SIGKILL)
            PROCESSES["posts"].wait()
            # Meanwhile: a user is created, writes, and is deleted.
            bob, bob_token, bob_password = user("bob")
            time.sleep(0.5)
            start("posts")
            wait_for("posts to serve after kill -9", lambda: healthy("posts"), 30)
            before = len(load.acknowledged)
            wait_for("writes after the restart", lambda: len(load.acknowledged) > before + 5, 30)
        if not load.all_stored(DBS["posts"]):
            fail("an acknowledged create was lost across kill -9")
        print(f"ok: posts-service kill -9: all {len(load.acknowledged)} acknowledged creates stored")

        posts = posts_pb2_grpc.PostServiceStub(grpc.insecure_channel(POSTS))
        bob_post = posts.CreatePost(posts_pb2.CreatePostRequest(title="bob", content="x"),
                                    metadata=[("authorization", f"Bearer {bob_token}")])
        # kill -9 of the auth-service right after a deletion commits.
        users = users_pb2_grpc.UserServiceStub(grpc.insecure_channel(AUTH))
        users.DeleteMe(users_pb2.DeleteMeRequest(password=bob_password),
                       metadata=[("authorization", f"Bearer {bob_token}")])
        PROCESSES["auth"].send_signal(signal.SIGKILL)
        PROCESSES["auth"].wait()
        start("auth")
        wait_for("auth to serve after kill -9", lambda: healthy("auth"), 30)

        def caught_up():
            outbox = psql("SELECT coalesce(max(sequence), 0) FROM user_events", DBS["auth"])
            cursor = psql("SELECT sequence FROM event_cursor", DBS["posts"])
            return outbox == cursor
        wait_for("the posts-service to catch up with the outbox", caught_up, 30)
        if psql(f"SELECT count(*) FROM posts WHERE id = {bob_post.id}", DBS["posts"]) != "0":
            fail("the deleted user's post survived")
        deleted = psql(f"SELECT count(*) FROM deleted_users WHERE user_id = {bob.id}", DBS["posts"])
        if deleted != "1":
            fail(f"the deletion was recorded {deleted} times")
        if not load.all_stored(DBS["posts"]):
            fail("an acknowledged create was lost across the auth-service's kill -9")
        print("ok: auth-service kill -9: events applied exactly once, cursor caught up")
        print("fault tests: all passed")
    finally:
        for process in PROCESSES.values():
            if process.poll() is None:
                process.kill()
        if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode != 0:
            pg("start")
            wait_for("PostgreSQL to return", lambda: subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode == 0)
        for db in DBS.values():
            psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    main()
