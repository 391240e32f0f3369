#!/usr/bin/env bash
# npm's `pretest` step: makes sure the programs the end-to-end tests drive are installed, so that the README's
# `npm install && npm test` works on a fresh Debian machine. What is missing is installed with apt-get when we are
# root; otherwise this prints the exact command to run and fails (a test that cannot run must never pass quietly).
#
#   command          Debian package      used by
#   curl             curl                HTTP/2 client through apilb (e2e)
#   openssl          openssl             throwaway test CA (every TLS test)
#   kubectl          kubernetes-client   the real client through apilb (e2e)
#   promtool         prometheus          `promtool check metrics` on the exposition
#   prometheus       prometheus          a real Prometheus scraping /metrics (e2e-prometheus)
#   ip               iproute2            network namespaces for the blackhole failover rows
#   iptables         iptables            the blackhole itself (DROP rules inside that namespace); `tc netem`
#                                        would do with iproute2 alone, but kernels without sch_netem exist
#   systemd-analyze  systemd             verify/security of the shipped units
#   python3          python3             sd_notify receiver in systemd-notify.test.ts
#   systemd-nspawn   systemd-container   test/real-node.test.ts: a Debian node booted with systemd as PID 1, the
#   debootstrap      debootstrap         shipped .deb installed in it
#   dpkg-parsechangelog dpkg-dev         npm run package (the .deb the real-node test installs)
#   lintian          lintian             checks of that .deb
set -euo pipefail

declare -A package=(
  [curl]=curl [openssl]=openssl [kubectl]=kubernetes-client [promtool]=prometheus [prometheus]=prometheus
  [ip]=iproute2 [iptables]=iptables [systemd-analyze]=systemd [python3]=python3
  [systemd-nspawn]=systemd-container [debootstrap]=debootstrap [dpkg-parsechangelog]=dpkg-dev [lintian]=lintian
)
# PATH as root has the sbin directories; a user's may not (iptables lives in /usr/sbin).
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

need=()
for cmd in "${!package[@]}"; do
  if [ "$cmd" = kubectl ]; then
    # The end-to-end tests run this exact path (KUBECTL in test/support/index.ts), not whatever kubectl is on PATH.
    [ -x /usr/bin/kubectl ] && continue
  else
    command -v "$cmd" >/dev/null && continue
  fi
  pkg=${package[$cmd]}
  [[ " ${need[*]} " == *" $pkg "* ]] || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
IFS=$'\n' need=($(sort <<<"${need[*]}")); unset IFS

install="apt-get install -y --no-install-recommends ${need[*]}"
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "npm test: missing test dependencies: ${need[*]}" >&2
  echo "  install them (Debian/Ubuntu):  sudo apt-get update && sudo $install" >&2
  echo "  the network-namespace blackhole tests also need root: run npm test as root" >&2
  exit 1
fi

echo "npm test: installing the Debian packages the tests use: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps prometheus from pulling node-exporter and friends.
apt-get install -qq -y --no-install-recommends "${need[@]}" >/dev/null
# The prometheus package starts a service on :9090 where systemd runs; the tests start their own on port 0.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi
