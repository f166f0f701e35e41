# kpa with the netfilter save tools (iptables-save, ip6tables-save in their legacy and nft
# flavours, and nft), for CI jobs and for the debug pod that reads a node's rules.
#
#   docker build -t ghcr.io/kpa-dev/kpa:v0.1.0 .
#   docker run --rm -v "$PWD:/work" ghcr.io/kpa-dev/kpa:v0.1.0 lint -r node.save -c cluster.json -o sarif
#
# The debug pod runs this image with its own command (sh -c ...), which replaces the
# entrypoint; everything that script needs (sh, grep, chroot, the save tools) is here.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /src/
COPY kpa /src/kpa
RUN python -m pip install --no-cache-dir /src && rm -rf /src

LABEL org.opencontainers.image.title="kpa" \
      org.opencontainers.image.description="What does this Kubernetes node's netfilter do to this packet, and why?" \
      org.opencontainers.image.source="https://github.com/kpa-dev/kpa" \
      org.opencontainers.image.licenses="Apache-2.0"

WORKDIR /work
ENTRYPOINT ["kpa"]
CMD ["--help"]
