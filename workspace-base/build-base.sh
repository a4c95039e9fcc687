#!/usr/bin/env bash
# Make the base image `debian:bookworm-slim` exist locally WITHOUT an image
# registry: debootstrap a minbase bookworm rootfs from the Debian mirror the
# host's apt already uses, trim it, and `docker import` it.
#
#   workspace-base/build-base.sh            # no-op when the image already exists
#   workspace-base/build-base.sh --force    # rebuild and re-tag it
#
# Knobs (environment):
#   AGENTBOX_DEBIAN_MIRROR   mirror URL (default: first bookworm mirror in the host's
#                            apt sources, else http://deb.debian.org/debian)
#   AGENTBOX_BASE_IMAGE      tag to create (default debian:bookworm-slim)
#   TMPDIR                   where the rootfs is built (default /var/tmp)
set -euo pipefail

SUITE=bookworm
IMAGE=${AGENTBOX_BASE_IMAGE:-debian:bookworm-slim}
FALLBACK_MIRROR=http://deb.debian.org/debian
FORCE=0

say() { printf 'build-base: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

command -v docker >/dev/null 2>&1 || die "docker CLI not found (run tests/setup/ensure-docker.sh)"
docker info >/dev/null 2>&1 || die "docker engine not reachable (run tests/setup/ensure-docker.sh)"

if ((!FORCE)) && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  say "$IMAGE already present ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-19)); nothing to do"
  exit 0
fi

# --- Host apt sources -> "URI SUITE" pairs (one-line and deb822 formats) -------
apt_entries() {
  local f
  local files=()
  [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] && files+=("$f")
  done
  for f in "${files[@]}"; do
    case "$f" in
      *.sources)
        # deb822 stanzas separated by blank lines; keep "Types: deb" ones, skip Enabled: no.
        awk '
          function flush(  n, u, s, i, j) {
            if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
              n = split(uris, u, /[ \t]+/); m = split(suites, s, /[ \t]+/)
              for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                if (u[i] != "" && s[j] != "") print u[i], s[j]
            }
            types = uris = suites = enabled = ""
          }
          /^[ \t]*#/ { next }
          /^[ \t]*$/ { flush(); next }
          { key = tolower($1); sub(/^[^:]*:[ \t]*/, "") }
          key == "types:"   { types = $0 }
          key == "uris:"    { uris = $0 }
          key == "suites:"  { suites = $0 }
          key == "enabled:" { enabled = tolower($0) }
          END { flush() }
        ' "$f"
        ;;
      *)
        # deb [options] URI SUITE COMPONENTS...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 { print $2, $3 }'
        ;;
    esac
  done
}

pick_mirror() {
  local uri suite
  while read -r uri suite; do
    [[ $suite == "$SUITE" && $uri =~ ^https?:// ]] || continue
    echo "${uri%/}"
    return 0
  done < <(apt_entries)
  return 1
}

MIRROR=${AGENTBOX_DEBIAN_MIRROR:-}
if [[ -z $MIRROR ]]; then
  if MIRROR=$(pick_mirror); then
    say "mirror from host apt sources: $MIRROR"
  else
    MIRROR=$FALLBACK_MIRROR
    say "no $SUITE mirror in host apt sources; falling back to $MIRROR"
  fi
else
  say "mirror from AGENTBOX_DEBIAN_MIRROR: $MIRROR"
fi

# sources.list for the image: the host's own bookworm, -updates and -security
# entries (so the image reaches exactly what the host reaches), else the mirror.
image_sources() {
  local uri suite seen=""
  while read -r uri suite; do
    [[ $uri =~ ^https?:// ]] || continue
    case "$suite" in "$SUITE" | "$SUITE-updates" | "$SUITE-security") ;; *) continue ;; esac
    [[ " $seen " == *" $uri|$suite "* ]] && continue
    seen+=" $uri|$suite"
    echo "deb ${uri%/} $suite main"
  done < <(apt_entries)
}
SOURCES=""
[[ -z ${AGENTBOX_DEBIAN_MIRROR:-} ]] && SOURCES=$(image_sources || true)
[[ -n $SOURCES ]] || SOURCES="deb $MIRROR $SUITE main"

if ! command -v debootstrap >/dev/null 2>&1; then
  say "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
fi

# --- Build the rootfs ----------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/agentbox-rootfs.XXXXXX")
ROOTFS=$WORK/rootfs
cleanup() {
  # debootstrap may leave proc/sys mounted inside the target when it fails:
  # unmount (deepest first) before deleting, and never cross into another fs.
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v p="$WORK/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r)
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

say "debootstrap --variant=minbase $SUITE -> $ROOTFS"
t0=$SECONDS
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  tail -n 30 "$WORK/debootstrap.log" >&2
  die "debootstrap failed"
}
say "debootstrap done in $((SECONDS - t0))s"

say "trimming rootfs"
printf '%s\n' "$SOURCES" >"$ROOTFS/etc/apt/sources.list"
# Like the official slim images: later package installs skip docs and man pages,
# apt keeps no .deb cache, and no apt lists ship in the image.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-no-recommends" <<'EOF'
APT::Install-Recommends "false";
EOF
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
  "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/debconf/*-old \
  "$ROOTFS"/var/log/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/man/* \
  "$ROOTFS"/usr/share/lintian/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
: >"$ROOTFS/etc/machine-id" 2>/dev/null || true
rm -f "$ROOTFS/etc/hostname" "$ROOTFS/etc/resolv.conf"
say "rootfs size: $(du -sh --one-file-system "$ROOTFS" | cut -f1)"

say "docker import -> $IMAGE"
t0=$SECONDS
id=$(tar --numeric-owner --xattrs -C "$ROOTFS" -c . |
  docker import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL agentbox.base=debootstrap-minbase agentbox.base.mirror=$MIRROR" \
    -m "debootstrap --variant=minbase $SUITE $MIRROR" - "$IMAGE")
say "imported $IMAGE ${id:0:19} in $((SECONDS - t0))s; size $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
