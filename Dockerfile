# The primed daemon as a container image (compose.yaml builds it).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin primed

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/primed --create-home primed
COPY --from=build /src/target/release/primed /usr/local/bin/primed
USER primed
WORKDIR /var/lib/primed
ENV PRIMED_HTTP_ADDR=0.0.0.0:8080 PRIMED_DATA_DIR=/var/lib/primed
EXPOSE 8080
# Ready means the tree is up and the database and NATS answer (GET /ready).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/primed", "health"]
ENTRYPOINT ["/usr/local/bin/primed"]
CMD ["run"]
