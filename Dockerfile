# unikgate: multi-stage build, small non-root runtime image.
#   docker build -t unikgate .
#   docker run -p 8080:8080 -e UNIKGATE_UPSTREAM__URL=http://matomo:80 ... unikgate
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked --bin unikgate || true
COPY src src
COPY templates templates
COPY migrations migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin unikgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/unikgate unikgate \
 && mkdir -p /var/lib/unikgate /etc/unikgate \
 && chown unikgate /var/lib/unikgate
COPY --from=build /src/target/release/unikgate /usr/local/bin/unikgate
COPY config/unikgate.toml /etc/unikgate/unikgate.toml
USER 10001
WORKDIR /var/lib/unikgate
# The data folder holds the SQLite store and the generated session key: keep it on a volume.
ENV UNIKGATE_SERVER__LISTEN=0.0.0.0:8080 \
    UNIKGATE_STORE__URL=sqlite:///var/lib/unikgate/unikgate.db
VOLUME /var/lib/unikgate
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/unikgate"]
CMD ["serve", "-c", "/etc/unikgate/unikgate.toml"]
