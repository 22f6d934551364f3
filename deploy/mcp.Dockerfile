# `code-mode mcp --http` as a small, non-root container image (kubernetes/mcp/): the CLI
# and, beside it, the runtime process it starts for its cells. Built like deploy/Dockerfile
# (the V8 archive through RUSTY_V8_ARCHIVE when the build has no network).
#
#   docker build -f deploy/mcp.Dockerfile -t code-mode-mcp .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
ARG RUSTY_V8_ARCHIVE=""
RUN if [ -z "${RUSTY_V8_ARCHIVE}" ]; then unset RUSTY_V8_ARCHIVE; fi \
 && cargo build --profile dist --locked -p code-mode-cli -p code-mode-bin \
 && install -D -m 0755 target/dist/code-mode /out/code-mode \
 && install -D -m 0755 target/dist/code-mode-bin /out/code-mode-bin

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/code-mode /usr/local/bin/code-mode
COPY --from=build /out/code-mode-bin /usr/local/bin/code-mode-bin
USER 65532:65532
# 3000: MCP over streamable HTTP (bearer token; TLS at the ingress).
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/code-mode"]
