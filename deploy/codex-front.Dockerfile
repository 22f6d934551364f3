# The Codex front (codex-code-mode-host) as a small, non-root container image, for a
# sidecar whose cells run on remote runtimes (--runtimes; kubernetes/codex-front/). Built
# without its `runtime` feature it carries no runtime and links no V8, so it builds
# without the V8 archive.
#
#   docker build -f deploy/codex-front.Dockerfile -t codex-code-mode-host .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked -p codex-code-mode-host --no-default-features \
 && install -D -m 0755 target/dist/codex-code-mode-host /out/codex-code-mode-host

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/codex-code-mode-host /usr/local/bin/codex-code-mode-host
USER 65532:65532
# 7400: agents (gRPC, and /healthz over HTTP/1), on loopback in the sidecar, or off it
# with --client-ca; 7401: /healthz only (--health-listen), for the kubelet's probes.
EXPOSE 7400 7401
ENTRYPOINT ["/usr/local/bin/codex-code-mode-host"]
