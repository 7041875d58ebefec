#!/usr/bin/env python3
"""A small client of the blog backend, on stubs generated from proto/.

    pip install -r requirements.txt && ./generate.sh
    python3 client.py --auth localhost:50051 --posts localhost:50052

Registers two users, logs both in, lets the first write a post, lists the
posts, and shows what happens when the second tries to edit the first's post.
"""

import argparse
import os
import secrets
import sys

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

from blog.auth.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc  # noqa: E402
from blog.posts.v1 import posts_pb2, posts_pb2_grpc  # noqa: E402


def bearer(token):
    """Call metadata carrying an access token."""
    return [("authorization", f"Bearer {token}")]


def register_and_login(users, auth, name):
    suffix = secrets.token_hex(4)
    username, password = f"{name}_{suffix}", f"{name}-secret-{suffix}"
    user = users.CreateUser(
        users_pb2.CreateUserRequest(username=username, email=f"{username}@example.com", password=password)
    )
    tokens = auth.Login(auth_pb2.LoginRequest(username_or_email=username, password=password))
    print(f"registered and logged in {user.username} (id {user.id})")
    return user, tokens.access_token


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auth", default="localhost:50051")
    parser.add_argument("--posts", default="localhost:50052")
    args = parser.parse_args()

    auth_channel = grpc.insecure_channel(args.auth)
    posts_channel = grpc.insecure_channel(args.posts)
    users = users_pb2_grpc.UserServiceStub(auth_channel)
    auth = auth_pb2_grpc.AuthServiceStub(auth_channel)
    posts = posts_pb2_grpc.PostServiceStub(posts_channel)

    alice, alice_token = register_and_login(users, auth, "alice")
    bob, bob_token = register_and_login(users, auth, "bob")

    post = posts.CreatePost(
        posts_pb2.CreatePostRequest(title="Hello from Python", content="Written with generated stubs."),
        metadata=bearer(alice_token),
    )
    print(f"{post.author.username} wrote post {post.id}: {post.title!r}")

    page = posts.ListPosts(posts_pb2.ListPostsRequest(page_size=5))
    print(f"{page.total_size} post(s); newest: {[p.title for p in page.posts]}")

    try:
        posts.UpdatePost(
            posts_pb2.UpdatePostRequest(id=post.id, title="Hijacked"),
            metadata=bearer(bob_token),
        )
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.PERMISSION_DENIED:
            print(f"{bob.username} may not edit {alice.username}'s post: {error.details()}")
        else:
            print(f"unexpected error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    else:
        print("the update by another user was accepted!", file=sys.stderr)
        return 1

    unchanged = posts.GetPost(posts_pb2.GetPostRequest(id=post.id))
    print(f"post {unchanged.id} is still titled {unchanged.title!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
