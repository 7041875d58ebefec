// A browser-style client of both services over gRPC-Web, written with
// Connect-ES (its gRPC-Web transport on fetch): register, log in, post with
// the token, and read a BadRequest's field violations.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "./gen/blog/auth/v1/auth_pb.js";
import { UserService } from "./gen/blog/auth/v1/users_pb.js";
import { PostService } from "./gen/blog/posts/v1/posts_pb.js";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";

const [authAddr, postsAddr] = process.argv.slice(2);
const auth = createGrpcWebTransport({ baseUrl: `http://${authAddr}` });
const posts = createGrpcWebTransport({ baseUrl: `http://${postsAddr}` });
const users = createClient(UserService, auth);

function check(ok, what) {
  if (!ok) {
    console.error(`FAIL: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

const user = await users.createUser({
  username: "connect-es",
  email: "connect-es@example.com",
  password: "a long enough password",
});
check(user.id > 0n, "CreateUser over gRPC-Web");

const tokens = await createClient(AuthService, auth).login({
  usernameOrEmail: "connect-es",
  password: "a long enough password",
});
check(tokens.accessToken.length > 0, "Login over gRPC-Web");

const post = await createClient(PostService, posts).createPost(
  { title: "From Connect-ES", content: "Sent over gRPC-Web." },
  { headers: { authorization: `Bearer ${tokens.accessToken}` } },
);
check(post.title === "From Connect-ES" && post.author?.username === "connect-es", "CreatePost with the token");

try {
  await users.createUser({ username: "", email: "nope", password: "x" });
  check(false, "an invalid CreateUser is refused");
} catch (e) {
  const err = ConnectError.from(e);
  check(err.code === Code.InvalidArgument, "an invalid CreateUser is INVALID_ARGUMENT");
  const [bad] = err.findDetails(BadRequestSchema);
  const fields = (bad?.fieldViolations ?? []).map((v) => v.field).sort();
  check(JSON.stringify(fields) === JSON.stringify(["email", "password", "username"]),
    `BadRequest details read by the browser client: ${fields}`);
}
