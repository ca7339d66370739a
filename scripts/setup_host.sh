#!/usr/bin/env bash
# Host setup for release-graph: a container engine with the Docker Engine API, a local registry,
# and the base images the demo services need, without any public registry.
# Idempotent: safe to rerun, also after the processes it started were killed (stale sockets, pid files).
#
# Environment knobs:
#   RG_STATE_DIR      where sockets, logs, registry data and cached base images live (/var/lib/release-graph)
#   RG_DOCKER_SOCKET  the socket Podman serves the Docker API on (/run/release-graph-podman.sock)
#   RG_REGISTRY_ADDR  the local registry (127.0.0.1:5000)
set -euo pipefail

STATE_DIR=${RG_STATE_DIR:-/var/lib/release-graph}
SOCKET=${RG_DOCKER_SOCKET:-/run/release-graph-podman.sock}
REGISTRY_ADDR=${RG_REGISTRY_ADDR:-127.0.0.1:5000}
mkdir -p "$STATE_DIR"

log() { printf '[setup] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "this step needs root (apt-get and /etc/containers): rerun as root or with sudo"; exit 1
  fi
}

engine_answers() {  # $1 = DOCKER_HOST
  local sock=${1#unix://}
  [ -S "$sock" ] && curl -fsS --max-time 3 --unix-socket "$sock" http://d/_ping >/dev/null 2>&1
}

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- packages: the project's tools that come from the distribution --------------------------------
# postgresql: the private clusters for Postgres instance storage (resources/postgres_server.py, tests/deploy).
# chromium: the browser the UI stories drive through Playwright (its own browser download needs the internet).
apt_install curl ca-certificates git iproute2 haproxy prometheus docker-registry skopeo \
  busybox-static debootstrap postgresql chromium

# --- container engine ------------------------------------------------------------------------------
DOCKER_HOST_VALUE=""
if [ -n "${DOCKER_HOST:-}" ] && engine_answers "$DOCKER_HOST"; then
  DOCKER_HOST_VALUE=$DOCKER_HOST
  log "using the engine at DOCKER_HOST=$DOCKER_HOST"
elif engine_answers unix:///var/run/docker.sock; then
  DOCKER_HOST_VALUE=unix:///var/run/docker.sock
  log "using the Docker engine at /var/run/docker.sock"
else
  apt_install podman runc conmon netavark aardvark-dns catatonit fuse-overlayfs uidmap iptables
  mkdir -p /etc/containers/registries.conf.d
  # Containers here cannot raise resource limits (no CAP_SYS_RESOURCE): ask for limits within the
  # hard limits we have, so runc never needs to raise them. crun fails on cgroup v1 hybrid: use runc.
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nofile" -gt 1048576 ] && nofile=1048576
  nproc=$(cat /proc/sys/kernel/pid_max); [ "$nproc" -gt 32768 ] && nproc=32768
  cgroup_manager=cgroupfs
  conf_new=$(cat <<CONF
# written by release-graph scripts/setup_host.sh
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "${cgroup_manager}"
events_logger = "file"
[network]
network_backend = "netavark"
CONF
)
  regs_new=$(cat <<CONF
# written by release-graph scripts/setup_host.sh: the local registry speaks plain HTTP
[[registry]]
location = "127.0.0.1:5000"
insecure = true
[[registry]]
location = "localhost:5000"
insecure = true
CONF
)
  changed=0
  if [ "$(cat /etc/containers/containers.conf 2>/dev/null)" != "$conf_new" ]; then
    printf '%s\n' "$conf_new" >/etc/containers/containers.conf; changed=1
  fi
  if [ "$(cat /etc/containers/registries.conf.d/release-graph.conf 2>/dev/null)" != "$regs_new" ]; then
    printf '%s\n' "$regs_new" >/etc/containers/registries.conf.d/release-graph.conf; changed=1
  fi
  pidfile=$STATE_DIR/podman-service.pid
  # A running API service caches containers.conf and registries.conf: restart it when they changed.
  if [ $changed = 1 ] && [ -f "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true; sleep 0.5
  fi
  if ! engine_answers "unix://$SOCKET"; then
    rm -f "$SOCKET"
    log "starting podman's Docker API on $SOCKET"
    nohup setsid podman system service --time 0 "unix://$SOCKET" \
      >"$STATE_DIR/podman-service.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 100); do engine_answers "unix://$SOCKET" && break; sleep 0.1; done
    engine_answers "unix://$SOCKET" || { log "podman API did not answer; see $STATE_DIR/podman-service.log"; exit 1; }
  fi
  DOCKER_HOST_VALUE=unix://$SOCKET
fi
export DOCKER_HOST=$DOCKER_HOST_VALUE

# --- local registry --------------------------------------------------------------------------------
registry_answers() { curl -fsS --max-time 3 "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; }
if ! registry_answers; then
  mkdir -p "$STATE_DIR/registry"
  cat >"$STATE_DIR/registry.yml" <<CONF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE_DIR/registry}
  delete: {enabled: true}
http:
  addr: $REGISTRY_ADDR
CONF
  log "starting the registry on $REGISTRY_ADDR"
  nohup setsid docker-registry serve "$STATE_DIR/registry.yml" >"$STATE_DIR/registry.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/registry.pid"
  for _ in $(seq 1 100); do registry_answers && break; sleep 0.1; done
  registry_answers || { log "registry did not answer; see $STATE_DIR/registry.log"; exit 1; }
fi

# --- base images -----------------------------------------------------------------------------------
# The demo services need a Python runtime; without a public registry we make one from Debian
# packages with debootstrap, cache the tarball, and push it to the local registry so that
# Dockerfiles say FROM 127.0.0.1:5000/base/python:3.11-bookworm.
python_image=$REGISTRY_ADDR/base/python:bookworm
busybox_image=$REGISTRY_ADDR/base/busybox:latest
image_in_registry() {  # $1 = repo path, $2 = tag
  curl -fs --max-time 5 -o /dev/null -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REGISTRY_ADDR/v2/$1/manifests/$2"
}
docker_api() {  # method path [curl args...]
  local method=$1 path=$2; shift 2
  curl -fsS --unix-socket "${DOCKER_HOST#unix://}" -X "$method" "http://d/v1.41$path" "$@"
}
push_to_registry() {  # $1 = image reference; push stream errors are reported inside a 200 response
  local out
  out=$(docker_api POST "/images/${1%:*}/push?tag=${1##*:}" -H 'X-Registry-Auth: e30=')
  if printf '%s' "$out" | grep -q '"error'; then log "push of $1 failed: $out"; exit 1; fi
}

if ! image_in_registry base/python bookworm; then
  tarball=$STATE_DIR/base-python-bookworm.tar
  if [ ! -s "$tarball" ]; then
    mirror=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1 | awk '{print $2}')
    [ -n "$mirror" ] || mirror=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
    [ -n "$mirror" ] || { log "no Debian mirror found in /etc/apt"; exit 1; }
    root=$STATE_DIR/rootfs-python
    rm -rf "$root"
    log "debootstrapping a minimal Python root from $mirror (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates,curl \
      bookworm "$root" "$mirror" >"$STATE_DIR/debootstrap.log" 2>&1 \
      || { log "debootstrap failed; see $STATE_DIR/debootstrap.log"; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
      "$root"/usr/share/man/* "$root"/usr/share/locale/*
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  log "importing the Python base image"
  ref=$(docker_api POST "/images/create?fromSrc=-&repo=${python_image%:*}&tag=bookworm&changes=ENV%20PATH%3D%2Fusr%2Flocal%2Fsbin%3A%2Fusr%2Flocal%2Fbin%3A%2Fusr%2Fsbin%3A%2Fusr%2Fbin%3A%2Fsbin%3A%2Fbin&changes=CMD%20%5B%22python3%22%5D" \
    -H 'Content-Type: application/x-tar' --data-binary "@$tarball")
  printf '%s' "$ref" | grep -q '"error' && { log "import failed: $ref"; exit 1; }
  # Podman's compat import ignores the tag parameter: tag the imported id explicitly.
  image_id=$(printf '%s' "$ref" | grep -oE 'sha256:[0-9a-f]{64}' | tail -1)
  docker_api POST "/images/$image_id/tag?repo=${python_image%:*}&tag=bookworm" >/dev/null
  push_to_registry "$python_image"
fi

if ! image_in_registry base/busybox latest; then
  ctx=$(mktemp -d)
  cp /bin/busybox "$ctx/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["/bin/sh"]\n' >"$ctx/Dockerfile"
  tar -C "$ctx" -cf "$ctx.tar" .
  out=$(docker_api POST "/build?t=$busybox_image&pull=0" -H 'Content-Type: application/x-tar' --data-binary "@$ctx.tar")
  rm -rf "$ctx" "$ctx.tar"
  printf '%s' "$out" | grep -q '"error' && { log "busybox build failed: $out"; exit 1; }
  push_to_registry "$busybox_image"
fi

# Builds use the engine's copy of the base images (pull=False); an engine whose storage was reset pulls them
# back from the local registry.
for image in "$python_image" "$busybox_image"; do
  if ! docker_api GET "/images/${image}/json" -o /dev/null 2>/dev/null; then
    log "pulling $image from the local registry into the engine"
    out=$(docker_api POST "/images/create?fromImage=${image%:*}&tag=${image##*:}")
    printf '%s' "$out" | grep -q '"error' && { log "pull of $image failed: $out"; exit 1; }
  fi
done

# --- the environment the rest of the project reads -------------------------------------------------
cat >"$STATE_DIR/env" <<ENV
DOCKER_HOST=$DOCKER_HOST
RG_REGISTRY=$REGISTRY_ADDR
ENV
log "ready: DOCKER_HOST=$DOCKER_HOST registry=$REGISTRY_ADDR (also in $STATE_DIR/env)"
