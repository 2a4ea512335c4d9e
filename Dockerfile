# pika's container image: `docker build -t pika:latest .` at the top of the
# repository (CI does not build it: base images cannot be pulled there).
#
# Stage 1 builds the release binary; stage 2 is a slim Debian with only
# that binary, run as an unprivileged user, its data directory a volume.

FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pika

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/pika --shell /usr/sbin/nologin pika \
 && mkdir -p /var/lib/pika \
 && chown pika:pika /var/lib/pika
COPY --from=build /src/target/release/pika /usr/local/bin/pika
USER pika
# storage.bw.path; a config file (CONFIG_FILE) or PIKA_* variables set
# everything else.
ENV PIKA_STORAGE_BW_PATH=/var/lib/pika
VOLUME ["/var/lib/pika"]
# HTTP API and UI; the cluster's peer port (QUIC).
EXPOSE 8080/tcp 5000/udp
# /healthz answers whenever the HTTP server does, over http or, with
# server.tls, https (a self-signed certificate is fine here).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s \
  CMD curl -fsS http://127.0.0.1:8080/healthz || curl -fsSk https://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["pika"]
