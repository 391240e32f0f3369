#!/bin/bash
# `npm run package`: builds the release artifacts from this checkout (after `npm ci`) into release/:
#   apilb_<version>_amd64.deb  apilb_<version>_arm64.deb            (dpkg-deb, Debian and Ubuntu)
#   apilb-<version>-linux-x64.tar.gz  apilb-<version>-linux-arm64.tar.gz   (the same tree, other distributions)
#   SHA256SUMS
# Each carries apilb (compiled dist/, production node_modules/) and its own Node.js runtime (node-runtime.env),
# started by the launcher /usr/bin/apilb. Layout and install/upgrade/removal behaviour: docs/install.md.
#
# Usage: packaging/build.sh [OUT_DIR]     (default release/)
# APILB_FAST=1: gzip -1 for the .debs and tarballs instead of xz -6 and gzip -9, the same files in them
# (test/packaging.test.ts; xz takes about a minute per .deb).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-release}" && cd "${1:-release}" && pwd)
version=$(node -p 'require("./package.json").version')
changelog_version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
if [ "$changelog_version" != "$version" ]; then
  echo "build.sh: package.json says $version, packaging/debian/changelog says $changelog_version" >&2
  exit 1
fi
# Same input, same bytes: file dates come from the last commit.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
umask 022
if [ -n "${APILB_FAST:-}" ]; then deb_compress=(-Zgzip -z1) gzip=-1; else deb_compress=(-Zxz) gzip=-9; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The application, the same for every architecture: compiled into the work directory (./dist is left alone),
# without source maps (src/ is not shipped), plus the production dependencies exactly as package-lock.json pins them.
app=$work/app
npx tsc -p tsconfig.json --outDir "$app/dist" --sourceMap false
chmod 0755 "$app/dist/cli.js"
cp package.json package-lock.json "$app/"
(cd "$app" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --silent && rm package-lock.json)
# What the modules ship for their own development and documentation is not needed to run them: dot files
# (.npmignore, .eslintrc, .husky/, ...) and each module's top-level test/, docs/, examples and HTML pages.
find "$app/node_modules" -mindepth 1 -name '.*' -prune -exec rm -rf {} +
find "$app/node_modules" -mindepth 2 -maxdepth 3 \( -name test -o -name docs -o -name examples -o -name '*.html' \) \
  ! -path '*/lib/*' -prune -exec rm -rf {} +

# The example configuration becomes the conffile with its backends: list commented out: without a backend
# `apilb check-config` fails, so neither postinst nor the units start apilb before the operator names one.
conffile=$work/apilb.yaml
awk '
  /^backends:/ { print "# apilb starts (and takes port 6443) only once this list names at least one API server."; list = 1; print "# " $0; next }
  list && /^[ \t]+-/ { print "# " $0; next }
  { list = 0; print }
' systemd/apilb.yaml >"$conffile"

# Debian's copyright file: apilb's, then one stanza per bundled npm module and the runtime's own license.
copyright() {
  cat packaging/debian/copyright
  (cd "$app/node_modules" && node -e '
    const { readFileSync, readdirSync } = require("fs");
    const dirs = readdirSync(".").flatMap((d) => d.startsWith("@") ? readdirSync(d).map((s) => d + "/" + s) : [d]);
    for (const dir of dirs.filter((d) => !d.startsWith(".")).sort()) {
      const { name, version, license } = JSON.parse(readFileSync(dir + "/package.json", "utf8"));
      process.stdout.write(`\nFiles: usr/lib/apilb/node_modules/${dir}/*\nCopyright: the authors of ${name} ${version}, named in its license file\nLicense: ${license}\n`);
    }')
  printf '\nFiles: usr/lib/apilb/node/*\nCopyright: Node.js contributors and the authors of the code it includes, listed below\nLicense: Node.js\n'
  sed -e 's/^$/./' -e 's/^/ /' "$1"
}

for arch in x64 arm64; do
  deb_arch=$([ "$arch" = x64 ] && echo amd64 || echo arm64)
  runtime=$(packaging/node-runtime.sh "$arch")
  top=$work/$arch/apilb-$version
  lib=$top/usr/lib/apilb
  doc=$top/usr/share/doc/apilb

  mkdir -p "$lib/node/bin" "$top/usr/bin" "$top/lib/systemd/system" "$top/etc/apilb" "$doc" \
    "$top/usr/share/apilb" "$top/usr/share/lintian/overrides"
  cp -r "$app/." "$lib/"
  install -m 0755 "$runtime/bin/node" "$lib/node/bin/node"
  install -m 0755 packaging/apilb "$top/usr/bin/apilb"
  # Units go live; drop-ins for other units (kubelet's) are examples the operator installs (docs/install.md).
  for f in systemd/*; do
    case $f in
      *.service | *.socket | *.timer | *.path | *.target) install -m 0644 "$f" "$top/lib/systemd/system/" ;;
      *.d) cp -r "$f" "$top/usr/share/apilb/" ;;
    esac
  done
  install -m 0644 "$conffile" "$top/etc/apilb/apilb.yaml"
  copyright "$runtime/LICENSE" >"$doc/copyright"
  gzip -9n <packaging/debian/changelog >"$doc/changelog.gz"
  gzip -9n <README.md >"$doc/README.md.gz"
  for f in docs/*.md; do gzip -9n <"$f" >"$doc/$(basename "$f").gz"; done
  mkdir -p "$top/usr/share/man/man1"
  gzip -9n <packaging/apilb.1 >"$top/usr/share/man/man1/apilb.1.gz"
  install -m 0644 packaging/debian/lintian-overrides "$top/usr/share/lintian/overrides/apilb"
  chmod -R u+rwX,go+rX,go-w "$top"
  # Only the runtime is executed directly: the launcher runs dist/cli.js and the modules with it.
  find "$lib" -type f ! -path "$lib/node/bin/node" -exec chmod 0644 {} +

  tar -C "$work/$arch" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
    -cf - "apilb-$version" | gzip "$gzip" -n >"$out/apilb-$version-linux-$arch.tar.gz"

  mkdir -m 0755 "$top/DEBIAN"
  install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$top/DEBIAN/"
  install -m 0644 packaging/debian/conffiles "$top/DEBIAN/"
  (cd "$top" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
  # Depends: what the runtime links against (readelf -V bin/node: GLIBC_2.28, GLIBCXX_3.4.21/CXXABI_1.3.11, GCC_3.0).
  cat >"$top/DEBIAN/control" <<EOF
Package: apilb
Version: $version
Architecture: $deb_arch
Maintainer: $(sed -n 's/^ -- \(.*>\)  .*/\1/p' packaging/debian/changelog | head -n 1)
Installed-Size: $(du -sk --exclude=DEBIAN "$top" | cut -f1)
Depends: libc6 (>= 2.28), libgcc-s1 (>= 3.0) | libgcc1 (>= 1:3.0), libstdc++6 (>= 7)
Section: net
Priority: optional
Description: node-local load balancer for the Kubernetes API server
 apilb runs on every node and listens on localhost:6443. It forwards kubelet's
 and other node agents' TCP connections (TLS passthrough) round-robin to the
 cluster's API servers, checks them over verified HTTPS, fails over fast and
 closes connections stuck on a dead server.
 .
 The package brings its own Node.js runtime. It starts nothing until
 /etc/apilb/apilb.yaml names at least one API server, and never on a
 control-plane node.
EOF
  dpkg-deb --root-owner-group "${deb_compress[@]}" --build "$top" "$out/apilb_${version}_${deb_arch}.deb" >/dev/null
done

(cd "$out" && sha256sum "apilb_${version}_amd64.deb" "apilb_${version}_arm64.deb" \
  "apilb-$version-linux-x64.tar.gz" "apilb-$version-linux-arm64.tar.gz" >SHA256SUMS)
ls -l "$out"
