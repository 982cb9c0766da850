#!/usr/bin/env bash
# Build deploy/Dockerfile with podman, then run the quickstart and `jntk verify` inside the image.
#   ./deploy/build_image.sh                 # base: the registry's python:3.11-slim, else a local
#                                           # Debian bookworm base made with debootstrap
#   BASE_IMAGE=debootstrap ./deploy/build_image.sh          # the debootstrap base on request
#   BASE_IMAGE=docker.io/library/python:3.11-slim ./deploy/build_image.sh   # that base, no fallback
# Knobs (environment variables):
#   IMAGE            the tag built (default localhost/jntk-dist:0.1.0)
#   BASE_IMAGE       auto (default) | debootstrap | an image reference
#   REBUILD_BASE=1   remake localhost/jntk-base:bookworm even when it exists
#   TORCH_INDEX_URL  torch's index (default the Dockerfile's, https://download.pytorch.org/whl/cpu;
#                    .../whl/cu128 for the CUDA image). Where the default is unreachable and a
#                    directory of pip's find-links holds a CPU torch wheel for Python 3.11, the
#                    build installs torch from that wheel (mounted read-only; PyPI for torch's
#                    own dependencies)
#   BUILD_NETWORK    the build's network (default: podman's own; `host` when it reaches no PyPI)
#   CONTAINERS_CONF  containers.conf to use (default: one written to $JNTK_IMAGE_DIR, never /etc)
#   JNTK_IMAGE_DIR   private working directory (default ~/.cache/jntk-image)
#   RUN_CHECK=0      build only; skip the quickstart run
# Needs root (debootstrap, podman's storage). Exit status: 0 built and checked; 2 no podman.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-localhost/jntk-dist:0.1.0}"
BASE_IMAGE="${BASE_IMAGE:-auto}"
REGISTRY_BASE=docker.io/library/python:3.11-slim
LOCAL_BASE=localhost/jntk-base:bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORK="${JNTK_IMAGE_DIR:-$HOME/.cache/jntk-image}"
TORCH_VERSION="$(sed -n 's/^ARG TORCH_VERSION=//p' deploy/Dockerfile)"

say() { echo "build_image: $*" >&2; }
die() { say "$*"; exit 1; }
now() { date +%s; }

command -v podman >/dev/null || { say "podman is not installed (apt-get install podman buildah runc)"; exit 2; }
mkdir -p "$WORK"

# The default runtime (crun) refuses this kind of machine's cgroup mode and rlimits: runc, cgroupfs,
# and no default ulimits, in a private containers.conf.
if [ -z "${CONTAINERS_CONF:-}" ]; then
    export CONTAINERS_CONF="$WORK/containers.conf"
    cat > "$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
fi

make_debootstrap_base() {
    # Debian bookworm (Python 3.11) + a venv at /opt/venv first on PATH, as python:3.11-slim has
    # `python` and `pip` first on PATH (Debian's own python3 refuses pip installs, PEP 668).
    command -v debootstrap >/dev/null || die "no debootstrap (apt-get install debootstrap)"
    local root="$WORK/rootfs"
    rm -rf "$root"
    say "debootstrap bookworm into $root ($DEBIAN_MIRROR)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "$DEBIAN_MIRROR" > "$WORK/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $WORK/debootstrap.log"
    cat > "$root/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot "$root" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive \
        && apt-get update -qq && apt-get upgrade -y -qq \
        && python3 -m venv /opt/venv \
        && apt-get clean && rm -rf /var/lib/apt/lists/* /root/.cache' > "$WORK/chroot.log" 2>&1 \
        || die "setting up the base failed; see $WORK/chroot.log"
    : > "$root/etc/resolv.conf"
    tar -C "$root" --numeric-owner -cf - . | podman import \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$root"
}

choose_base() {
    case "$BASE_IMAGE" in
        debootstrap) BASE_IMAGE="$LOCAL_BASE" ;;
        auto)
            if podman image exists "$REGISTRY_BASE" \
                || timeout 120 podman pull -q "$REGISTRY_BASE" >"$WORK/pull.log" 2>&1; then
                BASE_IMAGE="$REGISTRY_BASE"; return
            fi
            say "no registry base ($REGISTRY_BASE: $(tail -n 1 "$WORK/pull.log")); using $LOCAL_BASE"
            BASE_IMAGE="$LOCAL_BASE" ;;
    esac
    if [ "$BASE_IMAGE" = "$LOCAL_BASE" ] && { [ "${REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$LOCAL_BASE"; }; then
        make_debootstrap_base
    fi
}

# Where torch comes from: the Dockerfile's index when it answers, else a local CPU wheel.
TORCH_ARGS=()
choose_torch_source() {
    local index="${TORCH_INDEX_URL:-$(sed -n 's/^ARG TORCH_INDEX_URL=//p' deploy/Dockerfile)}"
    if curl -fsS -m 20 -o /dev/null "$index/torch/" 2>/dev/null; then
        TORCH_ARGS=(--build-arg "TORCH_INDEX_URL=$index"); return
    fi
    # A torch index asked for (a CUDA one, say) that does not answer is an error, not a CPU wheel.
    [ -z "${TORCH_INDEX_URL:-}" ] || die "torch index $index does not answer (TORCH_INDEX_URL)"
    local dir links
    links="${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true)"
    for dir in $links; do
        if compgen -G "$dir/torch-$TORCH_VERSION+cpu-cp311-*.whl" >/dev/null; then
            say "torch index $index unreachable; torch $TORCH_VERSION+cpu from $dir"
            TORCH_ARGS=(--volume "$dir:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels
                        --build-arg TORCH_INDEX_URL=https://pypi.org/simple); return
        fi
    done
    die "torch index $index unreachable and no torch-$TORCH_VERSION+cpu-cp311 wheel in pip's find-links"
}

# pip's trusted certificates: where this machine's pip names a CA bundle (PIP_CERT, pip config
# global.cert: a TLS-inspecting proxy's CA, say), the build's pip gets the same bundle, mounted
# read-only for the build only (an ARG, not in the image).
CERT_ARGS=()
choose_pip_cert() {
    local cert="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
    [ -n "$cert" ] && [ -f "$cert" ] || return 0
    say "pip in the build trusts $cert (this machine's pip certificate bundle)"
    CERT_ARGS=(--volume "$cert:/etc/pip-ca.pem:ro" --build-arg PIP_CERT=/etc/pip-ca.pem)
}

t0=$(now)
choose_base
t_base=$(( $(now) - t0 ))
choose_torch_source
choose_pip_cert
NET_ARGS=()
[ -z "${BUILD_NETWORK:-}" ] || NET_ARGS=(--network "$BUILD_NETWORK")

say "building $IMAGE from $BASE_IMAGE"
t1=$(now)
podman build -f deploy/Dockerfile --ignorefile deploy/Dockerfile.dockerignore \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" "${TORCH_ARGS[@]}" "${CERT_ARGS[@]}" \
    "${NET_ARGS[@]}" \
    -t "$IMAGE" . > "$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log" >&2; die "podman build failed; see $WORK/build.log"; }
t_build=$(( $(now) - t1 ))
size_mb=$(( $(podman image inspect --format '{{.Size}}' "$IMAGE") / 1000000 ))

if [ "${RUN_CHECK:-1}" = 0 ]; then
    echo "image $IMAGE built from $BASE_IMAGE: ${size_mb} MB; base ${t_base} s, build ${t_build} s"
    exit 0
fi
# The quickstart and its check, offline (no network but loopback), with a fresh token that is
# handed to podman through its environment, never on a command line or in a file.
t2=$(now)
RAY_AUTH_TOKEN="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
    podman run --rm --network none --shm-size 1g --env RAY_AUTH_TOKEN "$IMAGE" \
    bash -c 'jntk gram configs/quickstart.yaml && jntk verify runs/quickstart.zarr \
             && python -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)"' \
    > "$WORK/run.log" 2>&1 || { tail -n 30 "$WORK/run.log" >&2; die "the quickstart failed in $IMAGE; see $WORK/run.log"; }
t_run=$(( $(now) - t2 ))
echo "image $IMAGE built from $BASE_IMAGE and checked (jntk gram configs/quickstart.yaml, jntk verify;" \
    "$(tail -n 1 "$WORK/run.log")): ${size_mb} MB; base ${t_base} s, build ${t_build} s, run ${t_run} s"
