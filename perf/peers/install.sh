#!/bin/sh
# Installs what the load harness's peers (perf/src/peers.rs) need, if missing, and prints
# where each binary is:
#   nginx          apt-get install -y nginx            (Debian/Ubuntu)
#   rathole 0.5.0  cargo install rathole --version 0.5.0 --root "$RATHOLE_ROOT"
#                  (default root: $HOME/.cargo; binary in $RATHOLE_ROOT/bin/rathole)
# Idempotent, and quiet apart from the two "where" lines when both are already there.
#
# rathole is installed WITHOUT --locked: the Cargo.lock in its 0.5.0 package pins an old
# `time` crate that no longer compiles with current Rust. Its TLS transport uses native-tls
# (OpenSSL), so building it needs pkg-config and the OpenSSL headers (libssl-dev); the script
# installs those with apt-get too when it has to build. It also uses `openssl` (the command)
# at run time, to make rathole's PKCS#12 identity.
#
# Usage: perf/peers/install.sh          (root, or a user with sudo, for apt-get)
#        RATHOLE_ROOT=/opt/rathole perf/peers/install.sh
set -eu

RATHOLE_VERSION=0.5.0
RATHOLE_ROOT=${RATHOLE_ROOT:-${HOME:?HOME is not set; set RATHOLE_ROOT}/.cargo}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    SUDO=
fi

# apt-get install, with one `apt-get update` and a retry if the package lists are stale/empty.
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install.sh: apt-get not found; install these yourself: $*" >&2
        exit 1
    fi
    echo "install.sh: apt-get install -y $*" >&2
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; then
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
    fi
}

find_nginx() {
    command -v nginx 2>/dev/null && return 0
    [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx && return 0
    return 1
}

# --- nginx (and openssl, for rathole's PKCS#12 identity) ---------------------------------
if ! find_nginx >/dev/null; then
    apt_install nginx
fi
if ! command -v openssl >/dev/null 2>&1; then
    apt_install openssl
fi
NGINX=$(find_nginx) || { echo "install.sh: nginx still not found after apt-get" >&2; exit 1; }

# --- rathole 0.5.0 -----------------------------------------------------------------------
RATHOLE="$RATHOLE_ROOT/bin/rathole"
rathole_ok() {
    [ -x "$RATHOLE" ] && "$RATHOLE" --version 2>/dev/null | grep -q "Build Version: *$RATHOLE_VERSION"
}
if ! rathole_ok; then
    if ! command -v cargo >/dev/null 2>&1; then
        echo "install.sh: cargo not found; install Rust (https://rustup.rs) first" >&2
        exit 1
    fi
    # native-tls -> openssl-sys needs pkg-config and the OpenSSL headers.
    if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists openssl 2>/dev/null; then
        apt_install pkg-config libssl-dev
    fi
    echo "install.sh: cargo install rathole --version $RATHOLE_VERSION --root $RATHOLE_ROOT (a few minutes)" >&2
    cargo install rathole --version "$RATHOLE_VERSION" --root "$RATHOLE_ROOT" --quiet
    rathole_ok || { echo "install.sh: $RATHOLE is not rathole $RATHOLE_VERSION after cargo install" >&2; exit 1; }
fi

echo "nginx: $NGINX"
echo "rathole: $RATHOLE"
case ":$PATH:" in
    *":$RATHOLE_ROOT/bin:"*) ;;
    *) [ "$RATHOLE_ROOT" = "${HOME:-}/.cargo" ] ||
        echo "(set RATHOLE=$RATHOLE or put $RATHOLE_ROOT/bin on PATH for kubehub-perf)" ;;
esac
