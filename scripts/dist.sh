#!/usr/bin/env bash
# Build the release tarball, laid out like the reference plugins' release
# (cni-plugins-linux-<arch>-v<version>.tgz): the plugin binaries at the top
# level next to LICENSE, README.md and SHA256SUMS, so that
# `tar -C /opt/cni/bin -xzf <tarball>` installs them. Next to it go
# <tarball>.sha256 and <tarball>.sha512, as the reference publishes.
#
# Reproducible: names sorted, every mtime SOURCE_DATE_EPOCH (default: the
# last commit's time), owner and group 0, gzip without name or time. The
# binaries are fully static (scripts/static-target.sh): checked before
# packing.
#
#   scripts/dist.sh          build (cargo, release) and write dist/
#   scripts/dist.sh --path   print the tarball's path; builds nothing
set -euo pipefail
cd "$(dirname "$0")/.."

plugins=(bridge host-local loopback portmap ptp)
tools=(cni-run) # built and checked, not packed: not a plugin
out=dist

die() {
  echo "dist: $*" >&2
  exit 1
}

# The workspace version ([workspace.package] in Cargo.toml; the plugins
# inherit it) and the machine's architecture under Go's names, as in the
# reference's file names.
version=$(awk '/^\[/ {s = ($0 == "[workspace.package]")} s && $1 == "version" {gsub(/"/, "", $3); print $3; exit}' Cargo.toml)
[[ -n $version ]] || die "no version in [workspace.package] of Cargo.toml"
case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  armv7l | armv6l) arch=arm ;;
  ppc64le) arch=ppc64le ;;
  s390x) arch=s390x ;;
  riscv64) arch=riscv64 ;;
  *) die "unknown architecture $(uname -m)" ;;
esac
name=cni-rs-linux-$arch-v$version.tgz

if [[ ${1:-} == --path ]]; then
  echo "$PWD/$out/$name"
  exit 0
fi
[[ $# -eq 0 ]] || die "usage: $0 [--path]"

read -r triple rustflags < <(scripts/static-target.sh)
RUSTFLAGS="${rustflags:-}" "${CARGO:-cargo}" build --release --locked --target "$triple" --workspace --bins
bin=${CARGO_TARGET_DIR:-target}/$triple/release
# One build id in every plugin: in-process IPAM between plugins of a build.
scripts/stamp.sh "$bin"

# --- no run-time dependencies ----------------------------------------------
# Every binary is static: no NEEDED entry, no program interpreter, so it runs
# on any Linux of its architecture (README.md's Install section says so).
for b in "${plugins[@]}" "${tools[@]}"; do
  f=$bin/$b
  [[ -x $f ]] || die "$f not built"
  readelf -h "$f" >/dev/null || die "$f is not an ELF file"
  [[ $(readelf -S "$f") != *.symtab* ]] || die "$f is not stripped (profile.release has strip = true)"
  needed=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | paste -sd' ' || true)
  [[ -z $needed ]] || die "$b: needs [$needed]; release binaries must be static"
  interp=$(readelf -l "$f" | sed -n 's/.*interpreter: \(.*\)\]/\1/p')
  [[ -z $interp ]] || die "$b: loaded by $interp; release binaries must be static"
done
[[ $(tr -s ' \n' '  ' <README.md) == *"no run-time dependencies"* ]] ||
  die "README.md's Install section must say the binaries have \"no run-time dependencies\""

# --- the tarball ------------------------------------------------------------
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || true)}
[[ $epoch =~ ^[0-9]+$ ]] || die "not a git checkout: set SOURCE_DATE_EPOCH"

mkdir -p "$out"
stage=$(mktemp -d "$out/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
for b in "${plugins[@]}"; do install -m 0755 "$bin/$b" "$stage/$b"; done
install -m 0644 LICENSE README.md "$stage/"
(cd "$stage" && sha256sum "${plugins[@]}" >SHA256SUMS && chmod 0644 SHA256SUMS)

# Entries ./LICENSE ... ./portmap as in the reference, but no "./" entry
# for the directory itself: extracting into /opt/cni/bin then leaves that
# directory's own mode, owner and mtime alone.
mapfile -t entries < <(cd "$stage" && printf './%s\n' * | LC_ALL=C sort)
rm -f "$out/$name" "$out/$name.sha256" "$out/$name.sha512"
tar -C "$stage" --format=gnu --sort=name --mtime="@$epoch" \
  --owner=0 --group=0 --numeric-owner --no-recursion -cf - "${entries[@]}" |
  gzip -n -9 >"$out/$name.tmp"
mv "$out/$name.tmp" "$out/$name"
(cd "$out" && sha256sum "$name" >"$name.sha256" && sha512sum "$name" >"$name.sha512")

echo "dist: $out/$name ($(stat -c %s "$out/$name") bytes, static, $triple)" >&2
sed 's/^/dist:   /' "$out/$name.sha256" >&2
