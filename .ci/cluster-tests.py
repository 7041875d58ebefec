#!/usr/bin/env python3
"""The services as a cluster: two auth and two posts replicas (separate
processes of the release binary) on one PostgreSQL and one Redis, behind nginx
as the gRPC balancer, configured from deploy/nginx/nginx.conf with only the
addresses changed. Clients go through nginx unless a test is about one
replica.

1. A token from either auth replica works on either posts replica.
2. A logout through one auth replica is refused by both posts replicas
   within a second.
3. A guesser spread over both auth replicas gets one budget.
4. A user deleted through one replica loses their posts once.
5. kill -9 of one replica of each service under load: no acknowledged write
   is lost, the others keep answering.
6. A key rotation while traffic flows: no valid token refused; a token
   signed by the removed key is refused by both posts replicas.
7. 100k events, written first: a posts replica that started before them
   replays them; after the history is compacted a new one catches up through
   SnapshotUsers; both end with the same authors.

Everything listens on 127.0.0.1 and stops by itself.
"""

import base64
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples", "python", "gen"))

import grpc  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from blog.auth.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc  # noqa: E402
from blog.posts.v1 import posts_pb2, posts_pb2_grpc  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import Load, free_port, psql  # noqa: E402

BINARY = os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "blog")
PG = "postgres://postgres@127.0.0.1:5432"
SUFFIX = secrets.token_hex(4)
DBS = {
    "auth": f"auth_cluster_{SUFFIX}",
    "posts": f"posts_cluster_{SUFFIX}",
    "replay": f"posts_replay_{SUFFIX}",
    "snapshot": f"posts_snapshot_{SUFFIX}",
}
WORK = f"/tmp/blog-cluster-{SUFFIX}"
# Short token and key times, so that a rotation runs its whole course.
TOKEN_TTL, LEEWAY, JWKS_REFRESH = 20, 2, 2
FREE_FAILURES = 5
BULK_USERS = 40_000


def address():
    return f"127.0.0.1:{free_port()}"


BALANCER = {"auth": address(), "posts": address(), "auth_http": address()}
COMMON = dict(
    os.environ,
    INTERNAL_TOKEN="cluster-" + SUFFIX,
    AUTH_SERVICE_URL=f"http://{BALANCER['auth']}",
    AUTH_PUBLIC_URL=f"http://{BALANCER['auth_http']}",
    AUTH_DATABASE_URL=f"{PG}/{DBS['auth']}",
    POSTS_DATABASE_URL=f"{PG}/{DBS['posts']}",
    REDIS_URL="redis://127.0.0.1:6379/",
    TRUSTED_PROXIES="127.0.0.1",
    ACCESS_TOKEN_TTL_SECS=str(TOKEN_TTL),
    TOKEN_LEEWAY_SECS=str(LEEWAY),
    JWKS_REFRESH_SECS=str(JWKS_REFRESH),
    LOGIN_FREE_FAILURES=str(FREE_FAILURES),
    DATA_DIR=WORK,
    RUST_LOG="warn,auth_service=info,posts_service=info",
    # The loads write as fast as they can, as one user.
    POST_WRITES_PER_HOUR="10000000",
    POST_WRITE_BURST="100000",
)
PROCESSES = {}
REPLICAS = {}


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    for name in list(REPLICAS) + ["nginx"]:
        path = f"{WORK}/{name}.log"
        if os.path.exists(path):
            print(f"--- {name}", file=sys.stderr)
            print(open(path).read()[-3000:], file=sys.stderr)
    sys.exit(1)


def wait_for(what, condition, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    fail(f"waited {seconds} s for {what}")


def replica(name, service, **env):
    """Declares a replica: its addresses and environment."""
    grpc_addr, http_addr = address(), address()
    prefix = "AUTH" if service == "auth" else "POSTS"
    REPLICAS[name] = dict(
        COMMON, BLOG_SERVICES=service,
        **{f"{prefix}_LISTEN_ADDR": grpc_addr, f"{prefix}_HTTP_ADDR": http_addr}, **env)
    return grpc_addr


def start(name):
    log = open(f"{WORK}/{name}.log", "a")
    PROCESSES[name] = subprocess.Popen([BINARY], env=REPLICAS[name], stdout=log, stderr=log)


def healthy(name):
    return subprocess.run([BINARY, "healthcheck"], env=REPLICAS[name], capture_output=True).returncode == 0


def start_healthy(*names):
    for name in names:
        start(name)
    for name in names:
        wait_for(f"{name} to serve", lambda: healthy(name), 60)


def kill(name):
    PROCESSES[name].send_signal(signal.SIGKILL)
    PROCESSES[name].wait()


def stop(name):
    PROCESSES[name].send_signal(signal.SIGTERM)
    PROCESSES[name].wait(30)


def start_nginx(auth, posts, auth_http):
    """deploy/nginx/nginx.conf with this run's addresses, checked with
    `nginx -t` and started."""
    conf = open(os.path.join(ROOT, "deploy", "nginx", "nginx.conf")).read()

    def servers(addresses):
        return "".join(f"server {a} max_fails=1 fail_timeout=2s;\n        " for a in addresses).rstrip()

    for name, addresses in (("auth:50051", auth), ("posts:50052", posts), ("auth:8081", auth_http)):
        pattern = rf"server {re.escape(name)} [^;]*;"
        if not re.search(pattern, conf):
            fail(f"nginx.conf has no upstream server {name}")
        conf = re.sub(pattern, servers(addresses), conf)
    for port, key in (("50051", "auth"), ("50052", "posts"), ("8081", "auth_http")):
        conf = conf.replace(f"listen {port}", f"listen {BALANCER[key]}", 1)
    os.makedirs(f"{WORK}/nginx/logs", exist_ok=True)
    path = f"{WORK}/nginx/nginx.conf"
    with open(path, "w") as f:
        f.write(conf)
    command = ["nginx", "-p", f"{WORK}/nginx", "-c", path,
               "-g", f"pid {WORK}/nginx/nginx.pid; error_log {WORK}/nginx.log warn; daemon off;"]
    checked = subprocess.run(command + ["-t"], capture_output=True, text=True)
    if checked.returncode != 0:
        fail(f"nginx -t: {checked.stderr}")
    log = open(f"{WORK}/nginx.log", "a")
    PROCESSES["nginx"] = subprocess.Popen(command, stdout=log, stderr=log)

    def listening():
        try:
            socket.create_connection(BALANCER["posts"].split(":"), timeout=1).close()
            return True
        except OSError:
            return False
    wait_for("nginx to listen", listening)


def bearer(token):
    return [("authorization", f"Bearer {token}")]


class Clients:
    def __init__(self, addr):
        channel = grpc.insecure_channel(addr)
        self.channel = channel
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.users = users_pb2_grpc.UserServiceStub(channel)
        self.posts = posts_pb2_grpc.PostServiceStub(channel)


def code(call):
    try:
        call()
        return "OK"
    except grpc.RpcError as error:
        return error.code().name


def register(clients, name):
    password = f"{name}-cluster-{SUFFIX}"
    user = clients.users.CreateUser(users_pb2.CreateUserRequest(
        username=f"{name}_{SUFFIX}", email=f"{name}_{SUFFIX}@example.com", password=password))
    return user, password


def login(clients, user, password):
    return clients.auth.Login(auth_pb2.LoginRequest(username_or_email=user.username, password=password))


def jwt_parts(token):
    def decode(part):
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    header, payload, _ = token.split(".")
    return decode(header), decode(payload)


def forge(private_seed, header, claims):
    """A token signed with `private_seed` (an Ed25519 seed)."""
    def encode(value):
        return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).rstrip(b"=")
    signing_input = encode(header) + b"." + encode(claims)
    signature = Ed25519PrivateKey.from_private_bytes(private_seed).sign(signing_input)
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


class Traffic:
    """Logs in through the balancer and reads with each fresh token on both
    posts replicas, in a loop; counts refusals of tokens that are valid
    (fresh, their session live)."""

    def __init__(self, user, password, posts_addrs, post_id):
        self.user, self.password, self.post_id = user, password, post_id
        self.balanced = Clients(BALANCER["auth"])
        self.readers = [Clients(a) for a in posts_addrs]
        self.kids = set()
        self.calls = 0
        self.refused = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            try:
                token = login(self.balanced, self.user, self.password).access_token
            except grpc.RpcError as error:
                self.refused.append(f"login: {error.code().name}")
                time.sleep(0.2)
                continue
            self.kids.add(jwt_parts(token)[0]["kid"])
            for reader in self.readers:
                result = code(lambda: reader.posts.GetPost(
                    posts_pb2.GetPostRequest(id=self.post_id), metadata=bearer(token), timeout=5))
                self.calls += 1
                if result != "OK":
                    self.refused.append(f"GetPost with kid {jwt_parts(token)[0]['kid']}: {result}")
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(15)


def position(name):
    """The last event the posts replica `name` has seen."""
    url = f"http://{REPLICAS[name]['POSTS_HTTP_ADDR']}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)["event_stream"]["last_sequence"]
    except urllib.error.HTTPError as error:
        return json.load(error)["event_stream"]["last_sequence"]


def outbox_end():
    return int(psql("SELECT coalesce(max(sequence), 0) FROM user_events", DBS["auth"]))


def cursor(db):
    return int(psql("SELECT sequence FROM event_cursor", DBS[db]))


def main():
    os.makedirs(WORK, exist_ok=True)
    for db in DBS.values():
        psql(f"CREATE DATABASE {db}", "test")
    auth_addrs = [replica("auth1", "auth"), replica("auth2", "auth")]
    posts_addrs = [replica("posts1", "posts"), replica("posts2", "posts")]
    replica("replay", "posts", POSTS_DATABASE_URL=f"{PG}/{DBS['replay']}")
    replica("snapshot", "posts", POSTS_DATABASE_URL=f"{PG}/{DBS['snapshot']}")
    try:
        start_nginx(auth_addrs, posts_addrs,
                    [REPLICAS[n]["AUTH_HTTP_ADDR"] for n in ("auth1", "auth2")])
        # The first replica creates the schema and the first key; the second
        # finds both.
        start_healthy("auth1")
        start_healthy("auth2", "posts1", "posts2", "replay")
        # 0. 100k events, dated a month ago, as if written before the
        # tests' own: the replica that started before them replays them.
        bulk_events(BULK_USERS)
        bulk_end = outbox_end()
        began = time.time()
        wait_for("the replay replica to apply 100k events", lambda: cursor("replay") == bulk_end, 600)
        took = time.time() - began
        print(f"ok: {bulk_end} events replayed in {took:.1f} s ({bulk_end / took:.0f} events/s)")
        for name in ("posts1", "posts2"):
            wait_for(f"{name} to see every event", lambda: position(name) == bulk_end, 600)
        print(f"ok: the cluster's posts replicas are at {bulk_end} after {time.time() - began:.1f} s")

        balanced = Clients(BALANCER["auth"])
        auths = [Clients(a) for a in auth_addrs]
        posts = [Clients(a) for a in posts_addrs]
        via_balancer = Clients(BALANCER["posts"])

        # 1. Tokens from either auth replica work on either posts replica.
        alice, alice_password = register(balanced, "alice")
        tokens = [login(a, alice, alice_password).access_token for a in auths]
        post = via_balancer.posts.CreatePost(
            posts_pb2.CreatePostRequest(title="first", content="x"), metadata=bearer(tokens[0]))
        for token in tokens:
            for p in posts:
                result = code(lambda: p.posts.UpdatePost(
                    posts_pb2.UpdatePostRequest(id=post.id, title="updated"), metadata=bearer(token)))
                if result != "OK":
                    fail(f"a token from one auth replica was refused by a posts replica: {result}")
        print("ok: a token from either auth replica works on either posts replica")

        # 2. Logout through one auth replica: both posts replicas refuse
        # the token within a second.
        session = login(auths[0], alice, alice_password)
        auths[1].auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(session.access_token))
        logged_out = time.time()
        for index, p in enumerate(posts):
            while code(lambda: p.posts.CreatePost(
                    posts_pb2.CreatePostRequest(title="after logout", content="x"),
                    metadata=bearer(session.access_token))) != "UNAUTHENTICATED":
                if time.time() - logged_out > 1.0:
                    fail(f"posts{index + 1} still accepts the token a second after the logout")
                time.sleep(0.02)
        print(f"ok: logout refused by both posts replicas after {time.time() - logged_out:.2f} s")

        # 3. A guesser over both auth replicas gets one budget.
        guessed, throttled = 0, None
        for attempt in range(4 * FREE_FAILURES):
            target = [auths[0], auths[1], balanced][attempt % 3]
            result = code(lambda: target.auth.Login(auth_pb2.LoginRequest(
                username_or_email=alice.username, password="wrong-guess")))
            if result == "UNAUTHENTICATED":
                guessed += 1
            elif result == "RESOURCE_EXHAUSTED":
                throttled = attempt
                break
            else:
                fail(f"a guess answered {result}")
        # One process checks the free failures and one more, which starts
        # the delay; each replica counting alone would check twice that.
        budget = FREE_FAILURES + 1
        if throttled is None or guessed != budget:
            fail(f"{guessed} guesses checked over two replicas; one budget is {budget}")
        for a in auths:
            if code(lambda: a.auth.Login(auth_pb2.LoginRequest(
                    username_or_email=alice.username, password=alice_password))) != "RESOURCE_EXHAUSTED":
                fail("an auth replica let a login through while the account is throttled")
        print(f"ok: {guessed} guesses over both auth replicas, then both throttle")

        # 4. A deletion through one replica applies once on the shared database.
        bob, bob_password = register(balanced, "bob")
        bob_token = login(auths[0], bob, bob_password).access_token
        for i in range(3):
            via_balancer.posts.CreatePost(posts_pb2.CreatePostRequest(title=f"bob {i}", content="x"),
                                          metadata=bearer(bob_token))
        auths[1].users.DeleteMe(users_pb2.DeleteMeRequest(password=bob_password), metadata=bearer(bob_token))
        wait_for("the deletion to reach the posts", lambda: psql(
            f"SELECT count(*) FROM posts WHERE author_id = {bob.id}", DBS["posts"]) == "0", 10)
        wait_for("the cursor to reach the outbox", lambda: cursor("posts") == outbox_end(), 10)
        recorded = psql(f"SELECT count(*) FROM deleted_users WHERE user_id = {bob.id}", DBS["posts"])
        if recorded != "1":
            fail(f"the deletion was recorded {recorded} times")
        for p in posts:
            if code(lambda: p.posts.CreatePost(posts_pb2.CreatePostRequest(title="ghost", content="x"),
                                               metadata=bearer(bob_token))) != "UNAUTHENTICATED":
                fail("a posts replica accepts a deleted user's token")
        print("ok: a deletion through one replica applied once; both posts replicas refuse the token")

        # 5. kill -9 of one replica of each under load.
        carol, carol_password = register(balanced, "carol")
        carol_token = login(balanced, carol, carol_password).access_token
        with Load(BALANCER["posts"], carol_token) as load:
            wait_for("the load to run", lambda: load.oks() > 50)
            kill("posts1")
            kill("auth1")
            killed_at = load.oks()
            wait_for("the other replicas to keep answering", lambda: load.oks() > killed_at + 200, 20)
            # Logins and registrations go on through the balancer too.
            dave, dave_password = register(balanced, "dave")
            login(balanced, dave, dave_password)
        unexpected = set(load.codes) - {"OK", "UNAVAILABLE"}
        if unexpected:
            fail(f"unexpected answers while replicas died: {load.codes}")
        if not load.all_stored(DBS["posts"]):
            fail("an acknowledged create was lost")
        print(f"ok: kill -9 of auth1 and posts1 under load: {load.codes}, every acknowledged create stored")
        start_healthy("auth1", "posts1")

        # 6. Key rotation under traffic.
        erin, erin_password = register(balanced, "erin")
        old_token = login(balanced, erin, erin_password).access_token
        old_header, old_claims = jwt_parts(old_token)
        old_seed = bytes.fromhex(psql(
            f"SELECT encode(private_key, 'hex') FROM signing_keys WHERE kid = '{old_header['kid']}'", DBS["auth"]))
        with Traffic(erin, erin_password, posts_addrs, post.id) as traffic:
            time.sleep(2)
            rotated = subprocess.run([BINARY, "keys", "rotate"], env=REPLICAS["auth1"],
                                     capture_output=True, text=True)
            if rotated.returncode != 0:
                fail(f"keys rotate: {rotated.stderr}")
            print(rotated.stdout.strip())
            new_kid = psql("SELECT kid FROM signing_keys ORDER BY activate_time DESC LIMIT 1", DBS["auth"])
            wait_for("the new key to sign", lambda: new_kid in traffic.kids, 90)
            wait_for("the old key to be removed", lambda: psql(
                f"SELECT count(*) FROM signing_keys WHERE kid = '{old_header['kid']}'", DBS["auth"]) == "0", 90)
            # Every posts replica refetches its keys within JWKS_REFRESH_SECS.
            time.sleep(JWKS_REFRESH + 1)
        if traffic.refused:
            fail(f"valid tokens refused during the rotation: {traffic.refused[:5]}")
        if len(traffic.kids) < 2 or traffic.calls < 100:
            fail(f"the traffic did not span the rotation: kids {traffic.kids}, {traffic.calls} calls")
        now = int(time.time())
        forged = forge(old_seed, old_header, dict(old_claims, iat=now, nbf=now, exp=now + TOKEN_TTL))
        for p in posts:
            result = code(lambda: p.posts.GetPost(posts_pb2.GetPostRequest(id=post.id), metadata=bearer(forged)))
            if result != "UNAUTHENTICATED":
                fail(f"a token signed by the removed key answered {result}")
        print(f"ok: rotation under traffic: {traffic.calls} reads, none refused, "
              "the removed key's tokens refused by both posts replicas")

        # 7. The history is compacted: a restart prunes at once, and the
        # bulk is older than the retention. A new replica catches up through
        # a snapshot and ends where the replay did.
        stop("auth2")
        start_healthy("auth2")
        oldest = int(psql("SELECT min(sequence) FROM user_events", DBS["auth"]))
        if oldest <= bulk_end:
            fail(f"the history was not compacted: oldest {oldest}, the bulk ends at {bulk_end}")
        end = outbox_end()
        wait_for("the replay replica to apply every event", lambda: cursor("replay") == end, 30)
        began = time.time()
        start_healthy("snapshot")
        wait_for("the new replica to catch up", lambda: cursor("snapshot") == end, 300)
        print(f"ok: a new replica caught up through a snapshot in {time.time() - began:.1f} s")
        authors = "SELECT id, username, avatar_url FROM authors ORDER BY id"
        replayed, snapshotted = psql(authors, DBS["replay"]), psql(authors, DBS["snapshot"])
        if replayed != snapshotted:
            fail("the snapshot's authors differ from the replay's")
        if replayed != psql(authors, DBS["posts"]):
            fail("the cluster's authors differ from the replay's")
        count = len(replayed.splitlines())
        if count < BULK_USERS * 3 // 4:
            fail(f"only {count} authors")
        if int(psql("SELECT count(*) FROM authors WHERE username LIKE 'bulk\\_%' "
                    "AND username NOT LIKE 'bulk\\_renamed\\_%'", DBS["snapshot"])) != 0:
            fail("an old name survived the snapshot")
        print(f"ok: snapshot and replay agree on {count} authors")
        print("cluster tests: all passed")
    finally:
        for process in PROCESSES.values():
            if process.poll() is None:
                process.kill()
        for db in DBS.values():
            psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", "test")


def bulk_events(users):
    """`users` users created then renamed, a quarter of them deleted, and
    sessions revoked: 2.5 events per user, as the auth-service would have
    written them, dated a month ago, straight into the auth database."""
    month_ago = (int(time.time()) - 30 * 86400) * 1_000_000
    base = 1_000_000
    psql(f"""
        BEGIN;
        INSERT INTO users (id, username, username_key, username_skeleton, email, password_hash,
                           create_time, update_time)
        OVERRIDING SYSTEM VALUE
        SELECT {base} + i, 'bulk_renamed_' || i, 'bulk_renamed_' || i, 'bulk_renamed_' || i,
               'bulk' || i || '@example.com', 'x', {month_ago}, {month_ago}
        FROM generate_series(1, {users}) AS i WHERE i % 4 <> 0;
        INSERT INTO user_events (time, payload)
        SELECT {month_ago}, payload FROM (
            SELECT 1 AS phase, i, json_build_object('type', 'user_upserted', 'user_id', {base} + i,
                   'username', 'bulk_' || i, 'avatar_key', NULL)::text AS payload
            FROM generate_series(1, {users}) AS i
            UNION ALL
            SELECT 2, i, json_build_object('type', 'user_upserted', 'user_id', {base} + i,
                   'username', 'bulk_renamed_' || i, 'avatar_key', NULL)::text
            FROM generate_series(1, {users}) AS i
            UNION ALL
            SELECT 3, i, json_build_object('type', 'sessions_revoked', 'user_id', {base} + i,
                   'session_ids', json_build_array('bulk-session-' || i))::text
            FROM generate_series(1, {users} / 4) AS i
            UNION ALL
            SELECT 4, i, json_build_object('type', 'user_deleted', 'user_id', {base} + i)::text
            FROM generate_series(4, {users}, 4) AS i
        ) AS events ORDER BY phase, i;
        COMMIT;""", DBS["auth"])


if __name__ == "__main__":
    main()
