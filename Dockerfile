# unikgate: multi-stage build, small non-root runtime image.
#   docker build -t unikgate .
#   docker run -p 8080:8080 -v unikgate:/var/lib/unikgate \
#     -e UNIKGATE_UPSTREAM__URL=http://matomo:80 -e UNIKGATE_PROVIDER__CLIENT_ID=... unikgate
# Until the provider's credentials are set it fails closed (readyz 503, every page says so).
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that code changes do not rebuild them. Cargo reads every target the
# manifest names (the real-Matomo test among them): stubs stand in for them in this layer, and a
# failure here fails the build.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > tests/real_matomo.rs \
 && cargo build --release --locked --bin unikgate \
 && rm -rf src
# What the compiler reads: the code, and the files it includes (pages, stylesheet, catalogues,
# migrations).
COPY src src
COPY templates templates
COPY migrations migrations
COPY locales locales
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin unikgate

# The runtime: the binary and its reference configuration. No package is added: TLS to the
# provider uses the roots built into the binary (webpki-roots).
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/unikgate --shell /usr/sbin/nologin unikgate \
 && mkdir -p /var/lib/unikgate /etc/unikgate \
 && chown 10001 /var/lib/unikgate && chmod 0700 /var/lib/unikgate
COPY --from=build /src/target/release/unikgate /usr/local/bin/unikgate
COPY config/unikgate.toml /etc/unikgate/unikgate.toml
USER 10001
WORKDIR /var/lib/unikgate
# The data folder holds the SQLite store and the generated session key: keep it on a volume.
ENV UNIKGATE_CONFIG=/etc/unikgate/unikgate.toml \
    UNIKGATE_SERVER__LISTEN=0.0.0.0:8080 \
    UNIKGATE_STORE__URL=sqlite:///var/lib/unikgate/unikgate.db
VOLUME /var/lib/unikgate
EXPOSE 8080
# The binary asks itself (GET <prefix>/healthz on server.listen): no curl in the image.
HEALTHCHECK --interval=30s --timeout=6s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/unikgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/unikgate"]
CMD ["serve"]
