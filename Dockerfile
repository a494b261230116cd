# Build
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY benches benches
RUN cargo build --release --locked --bin pbx2mqtt

# Run
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/pbx2mqtt pbx2mqtt \
    && mkdir -p /var/lib/pbx2mqtt && chown pbx2mqtt /var/lib/pbx2mqtt
COPY --from=build /src/target/release/pbx2mqtt /usr/local/bin/pbx2mqtt
COPY config/pbx2mqtt.example.toml /etc/pbx2mqtt/pbx2mqtt.example.toml
USER pbx2mqtt
WORKDIR /var/lib/pbx2mqtt
ENV PBX2MQTT_DATABASE__URL=sqlite:///var/lib/pbx2mqtt/history.db \
    PBX2MQTT_HTTP__LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["pbx2mqtt"]
CMD ["run", "--config", "/etc/pbx2mqtt/pbx2mqtt.toml"]
