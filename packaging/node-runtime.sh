#!/bin/sh
# Prints the directory of the pinned Node.js runtime (node-runtime.env) for ARCH (x64 or arm64; default: this
# machine's), which holds bin/node and LICENSE. The first call fetches node-linux-ARCH@NODE_VERSION with
# `npm pack` (works for any ARCH: nothing is installed or run), refuses it unless its sha512 matches the pinned
# integrity, and unpacks it into node_modules/.cache/apilb/; later calls print the cached directory.
# Used by build.sh and by CI:  PATH="$(packaging/node-runtime.sh)/bin:$PATH" npm test
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/node-runtime.env"

arch=${1:-$(uname -m)}
case $arch in
  x64 | x86_64 | amd64) arch=x64; want=$NODE_INTEGRITY_x64 ;;
  arm64 | aarch64) arch=arm64; want=$NODE_INTEGRITY_arm64 ;;
  *) echo "node-runtime.sh: no pinned Node.js runtime for architecture '$arch' (x64, arm64)" >&2; exit 1 ;;
esac

dir=$here/../node_modules/.cache/apilb/node-v$NODE_VERSION-linux-$arch
if [ ! -x "$dir/bin/node" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  npm pack "node-linux-$arch@$NODE_VERSION" --pack-destination "$tmp" --silent >/dev/null
  tgz=$tmp/node-linux-$arch-$NODE_VERSION.tgz
  got=$(node -p '"sha512-" + require("crypto").createHash("sha512").update(require("fs").readFileSync(process.argv[1])).digest("base64")' "$tgz")
  if [ "$got" != "$want" ]; then
    echo "node-runtime.sh: node-linux-$arch@$NODE_VERSION has integrity $got, pinned $want: refusing it" >&2
    exit 1
  fi
  tar -xzf "$tgz" -C "$tmp" package/bin/node package/LICENSE
  mkdir -p "$(dirname "$dir")"
  # Renamed into place in one step, so a concurrent caller sees either nothing or the whole runtime.
  mv -T "$tmp/package" "$dir" 2>/dev/null || [ -x "$dir/bin/node" ]
fi
cd "$dir" && pwd
