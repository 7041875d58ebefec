#!/usr/bin/env python3
"""Runs the release binary the way docker-compose.yml runs the image.

There is no container engine on CI, so this reads each service's environment
and secrets from docker-compose.yml (and the image defaults from the
Dockerfile's ENV), maps the compose host names to loopback and the secrets to
local files, creates the databases the compose PostgreSQL would hold, and
starts one process per service. It then drives them with grpcurl (health,
register, login, create post, list), checks the image's health-check command,
and stops them with SIGTERM.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "blog")
PG = "postgres://postgres@127.0.0.1:5432"


def fail(message, logs=()):
    print(f"FAIL: {message}", file=sys.stderr)
    for path in logs:
        print(f"--- {path}", file=sys.stderr)
        print(open(path).read()[-4000:], file=sys.stderr)
    sys.exit(1)


def image_env():
    """The ENV of the Dockerfile's final stage."""
    text = open(os.path.join(ROOT, "Dockerfile")).read().replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]
    env = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line):
                env[key] = value
    return env


def psql(sql, db="test"):
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
        check=True,
    )


def grpcurl(addr, method, data=None, token=None, ok=True):
    args = ["grpcurl", "-plaintext"]
    if token:
        args += ["-H", f"authorization: Bearer {token}"]
    if data is not None:
        args += ["-d", json.dumps(data)]
    args += [addr, method]
    out = subprocess.run(args, capture_output=True, text=True)
    if ok and out.returncode != 0:
        fail(f"{method}: {out.stdout}{out.stderr}", LOGS)
    return out.stdout + out.stderr


LOGS = []

HEALTH_PROTO = """syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_balancer(compose, work, addresses):
    """nginx with the compose file's balancer configuration: the replicas'
    names mapped to loopback, its published ports to free ones (the
    services hold theirs here), checked with `nginx -t`."""
    mount = next(v for v in compose["services"]["balancer"]["volumes"] if v.endswith("/etc/nginx/nginx.conf:ro"))
    conf = open(os.path.join(ROOT, mount.split(":")[0])).read()
    conf = re.sub(r"server (auth|posts):", "server 127.0.0.1:", conf)
    for port, name in (("50051", "auth"), ("50052", "posts"), ("8081", "auth_http")):
        if f"listen {port}" not in conf:
            fail(f"the balancer does not listen on {port}")
        conf = conf.replace(f"listen {port}", f"listen {addresses[name]}", 1)
    prefix = os.path.join(work, "nginx")
    os.makedirs(os.path.join(prefix, "logs"))
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    log = os.path.join(work, "balancer.log")
    LOGS.append(log)
    command = ["nginx", "-p", prefix, "-c", path,
               "-g", f"pid {prefix}/nginx.pid; error_log {log} warn; daemon off;"]
    checked = subprocess.run(command + ["-t"], capture_output=True, text=True)
    if checked.returncode != 0:
        fail(f"nginx -t: {checked.stderr}")
    print("ok: the balancer's configuration passes nginx -t")
    return subprocess.Popen(command, stdout=open(log, "a"), stderr=subprocess.STDOUT)


def main():
    compose = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))
    work = tempfile.mkdtemp(prefix="blog-deploy-")
    password = secrets.token_hex(12)
    suffix = secrets.token_hex(4)
    balancer = {name: f"127.0.0.1:{free_port()}" for name in ("auth", "posts", "auth_http")}

    # The compose PostgreSQL: a user and one database per service.
    role = f"blog_{suffix}"
    dbs = {"auth": f"auth_deploy_{suffix}", "posts": f"posts_deploy_{suffix}"}
    psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    for db in dbs.values():
        psql(f"CREATE DATABASE {db} OWNER {role}")

    # The secrets, as the compose file's header says to make them.
    secret_dir = os.path.join(work, "secrets")
    os.makedirs(secret_dir)
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", os.path.join(secret_dir, "signing_key.pem")],
        check=True,
    )
    with open(os.path.join(secret_dir, "internal_token"), "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    with open(os.path.join(secret_dir, "web_session_key"), "w") as f:
        f.write(secrets.token_urlsafe(32).rstrip("=") + "\n")
    secret_files = {
        name: os.path.normpath(os.path.join(ROOT, spec["file"])).replace(os.path.join(ROOT, "secrets"), secret_dir)
        for name, spec in compose["secrets"].items()
    }

    def environment(service):
        env = dict(os.environ)
        env.update(image_env())
        env["DATA_DIR"] = os.path.join(work, service)
        for key, value in compose["services"][service]["environment"].items():
            value = str(value)
            value = re.sub(r"\$\{POSTGRES_PASSWORD[^}]*\}", password, value)
            value = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m.group(1), m.group(2)), value)
            value = value.replace("@postgres:5432/auth", f"@127.0.0.1:5432/{dbs['auth']}")
            value = value.replace("@postgres:5432/posts", f"@127.0.0.1:5432/{dbs['posts']}")
            value = value.replace("postgres://blog:", f"postgres://{role}:")
            value = value.replace("http://balancer:50051", f"http://{balancer['auth']}")
            value = value.replace("http://balancer:50052", f"http://{balancer['posts']}")
            value = value.replace("redis://redis:", "redis://127.0.0.1:")
            for name, path in secret_files.items():
                value = value.replace(f"/run/secrets/{name}", path)
            env[key] = value
        return env

    processes = {}
    try:
        for service in ["auth", "posts", "web"]:
            log = os.path.join(work, f"{service}.log")
            LOGS.append(log)
            processes[service] = subprocess.Popen(
                [BINARY] + compose["services"][service].get("command", ["serve"]),
                env=environment(service),
                stdout=open(log, "w"),
                stderr=subprocess.STDOUT,
            )
            if service == "posts":
                # The balancer starts once posts exists; posts becomes
                # healthy through it (its keys come from the balanced auth).
                processes["balancer"] = start_balancer(compose, work, balancer)
            # depends_on: condition: service_healthy, via the image's check.
            check = [BINARY, "healthcheck"]
            for _ in range(100):
                if subprocess.run(check, env=environment(service), capture_output=True).returncode == 0:
                    break
                if processes[service].poll() is not None:
                    fail(f"{service} exited", LOGS)
                time.sleep(0.2)
            else:
                fail(f"{service} never became healthy", LOGS)
            print(f"ok: {service} healthy (blog healthcheck)")

        # Clients reach the services through the balancer, as compose
        # publishes it.
        auth, posts = balancer["auth"], balancer["posts"]
        # Reflection is off, as compose configures it for production.
        if "reflection" not in grpcurl(posts, "list", ok=False).lower():
            fail("reflection should be off in the compose configuration", LOGS)
        print("ok: reflection off")

        # Without reflection grpcurl needs the contract: the proto files, and
        # the standard health protocol.
        health_dir = os.path.join(work, "health")
        os.makedirs(os.path.join(health_dir, "grpc/health/v1"))
        with open(os.path.join(health_dir, "grpc/health/v1/health.proto"), "w") as f:
            f.write(HEALTH_PROTO)
        proto = ["-import-path", os.path.join(ROOT, "proto"), "-import-path", health_dir]

        def call(addr, method, data=None, token=None, ok=True, files=()):
            args = ["grpcurl", "-plaintext"] + proto
            for f in files:
                args += ["-proto", f]
            if token:
                args += ["-H", f"authorization: Bearer {token}"]
            if data is not None:
                args += ["-d", json.dumps(data)]
            out = subprocess.run(args + [addr, method], capture_output=True, text=True)
            if ok and out.returncode != 0:
                fail(f"{method}: {out.stdout}{out.stderr}", LOGS)
            return out.stdout + out.stderr

        for addr in [auth, posts]:
            out = call(addr, "grpc.health.v1.Health/Check", {}, files=["grpc/health/v1/health.proto"])
            if '"SERVING"' not in out:
                fail(f"{addr} not serving: {out}", LOGS)
        print("ok: grpc health")
        users = ["blog/auth/v1/users.proto"]
        authp = ["blog/auth/v1/auth.proto"]
        postsp = ["blog/posts/v1/posts.proto"]
        out = call(auth, "blog.auth.v1.UserService/CreateUser",
                   {"username": "deploy", "email": "deploy@example.com", "password": "a deployment password"},
                   files=users)
        assert '"username": "deploy"' in out, out
        print("ok: register")
        out = call(auth, "blog.auth.v1.AuthService/Login",
                   {"username_or_email": "deploy", "password": "a deployment password"}, files=authp)
        token = json.loads(out)["accessToken"]
        print("ok: login")
        out = call(posts, "blog.posts.v1.PostService/CreatePost",
                   {"title": "Deployed", "content": "Hello from the deploy smoke test"}, token=token, files=postsp)
        assert '"username": "deploy"' in out, out
        print("ok: create post")
        out = call(posts, "blog.posts.v1.PostService/ListPosts", {"page_size": 10}, files=postsp)
        assert '"totalSize": "1"' in out, out
        print("ok: list posts")

        # The website, as a browser sees it: the post on the home page.
        import urllib.request
        page = urllib.request.urlopen("http://127.0.0.1:8080/", timeout=10).read().decode()
        if "Deployed" not in page:
            fail(f"the website's home page lacks the post: {page[:2000]}", LOGS)
        print("ok: the website shows the post")

        for service, process in processes.items():
            process.send_signal(signal.SIGTERM)
        for service, process in processes.items():
            if process.wait(timeout=30) != 0:
                fail(f"{service} exited with {process.returncode} on SIGTERM", LOGS)
        print("ok: SIGTERM stops every service cleanly")
        print("deploy smoke: all passed")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
        for db in dbs.values():
            psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        psql(f"DROP ROLE IF EXISTS {role}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
