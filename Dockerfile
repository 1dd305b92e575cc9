# The image the Kubernetes manifests run (cluster-configs/kubernetes/): one `shoal` binary
# on Debian slim (the coordinators' start script needs /bin/sh and install(1)).
#   docker build -t registry.example.com/shoal:0.1.0 .
# Models are not baked in: deploy them from a source (`shoal deploy`), and nodes fetch them
# from the coordinators' artifact store.
# Any Rust >= 1.89 (the workspace's rust-version) builds it.
FROM docker.io/library/rust:1-slim-trixie AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p shoal \
 && cp target/release/shoal /shoal

FROM docker.io/library/debian:trixie-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/shoal --no-create-home shoal \
 && mkdir -p /var/lib/shoal && chown shoal:shoal /var/lib/shoal
COPY --from=build /shoal /usr/local/bin/shoal
USER 10001
WORKDIR /var/lib/shoal
ENTRYPOINT ["shoal"]
CMD ["--help"]
