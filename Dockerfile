# pbx2mqtt: a small non-root image with the one binary.
#
#   docker build -t pbx2mqtt .
#   docker run --rm -p 127.0.0.1:8080:8080 -e PBX2MQTT_MQTT__URL=mqtt://broker:1883 pbx2mqtt
#
# docker-compose.yml builds it for the bridge and the simulator. The image
# reads /etc/pbx2mqtt/docker.toml (PBX2MQTT_CONFIG; config/docker.toml of
# the repository, also baked in) and keeps its SQLite history in the volume
# /var/lib/pbx2mqtt.

# --- Build -------------------------------------------------------------------
FROM rust:1-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# No debug info and no symbols: the binary is a third of the size.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never

# Dependencies first, in their own layer: this is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source change. Every target
# of Cargo.toml gets a stub so that the manifest is valid.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in pipeline report_data; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && cargo build --release --locked --no-default-features --bin pbx2mqtt \
    && rm -rf src

# The real build, with everything .dockerignore lets through (sources,
# migrations, config, and any asset directory the crate embeds). `touch`
# makes the sources newer than the stub's build records, whatever times
# COPY gave them, so cargo rebuilds the crate (and re-reads migrations/,
# which sqlx embeds into it).
COPY . .
RUN find src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --no-default-features --bin pbx2mqtt \
    && ./target/release/pbx2mqtt --version | grep -q '^pbx2mqtt ' \
    && mkdir -p /out/var/lib/pbx2mqtt /out/etc/pbx2mqtt \
    && cp target/release/pbx2mqtt /out/pbx2mqtt \
    && cp config/docker.toml /out/etc/pbx2mqtt/docker.toml

# --- Run ---------------------------------------------------------------------
# glibc, libgcc, CA certificates and a "nonroot" user (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/pbx2mqtt /usr/local/bin/pbx2mqtt
COPY --from=build /out/etc/pbx2mqtt /etc/pbx2mqtt
COPY --from=build --chown=65532:65532 /out/var/lib/pbx2mqtt /var/lib/pbx2mqtt
USER 65532:65532
WORKDIR /var/lib/pbx2mqtt
# Explicit, so `docker compose exec pbx2mqtt pbx2mqtt report summary` and
# every other subcommand read the same file as the service.
ENV PBX2MQTT_CONFIG=/etc/pbx2mqtt/docker.toml
VOLUME /var/lib/pbx2mqtt
EXPOSE 8080
# GET http://127.0.0.1:8080/healthz; exit 0 or 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["pbx2mqtt", "healthcheck"]
ENTRYPOINT ["pbx2mqtt"]
CMD ["run"]
