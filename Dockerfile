# syntax=docker/dockerfile:1
# One image for the whole blog: BLOG_SERVICES=auth, posts or web picks which
# one a container runs (docker-compose.yml sets it).

ARG RUST_VERSION=1.95

# cargo-chef splits the build so that dependencies form their own layer,
# rebuilt only when Cargo.toml or Cargo.lock change.
FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin blog

# glibc and libgcc only, no shell, runs as an unprivileged user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/blog /usr/local/bin/blog
WORKDIR /home/nonroot
ENV AUTH_LISTEN_ADDR=0.0.0.0:50051 \
    AUTH_HTTP_ADDR=0.0.0.0:8081 \
    POSTS_LISTEN_ADDR=0.0.0.0:50052 \
    POSTS_HTTP_ADDR=0.0.0.0:8082 \
    WEB_HTTP_ADDR=0.0.0.0:8080 \
    DATA_DIR=/home/nonroot/data \
    LOG_FORMAT=json
EXPOSE 50051 8081 50052 8082 8080
# 65532 is the distroless "nonroot" user.
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/blog", "healthcheck"]
# Exec form: the binary is PID 1 and receives SIGTERM itself.
ENTRYPOINT ["/usr/local/bin/blog"]
CMD ["serve"]
