#!/usr/bin/env bash
# Install the agentbox appliance on this host, or into a scratch root.
#
#   appliance/install.sh [--root DIR] [--no-start] [--binary PATH]
#                        [--agent-binary PATH] [--image-tar FILE] [--skip-image]
#
#   --root DIR           install under DIR (DESTDIR-style, for tests and image
#                        builders): files only; no systemctl, no image build,
#                        no AppArmor load, no doctor
#   --no-start           enable the service but do not start it now
#   --binary PATH        the agentbox binary (default: target/release/agentbox,
#                        else target/debug/agentbox, of this checkout)
#   --agent-binary PATH  workspace-agent, shipped so the installed image build
#                        needs no sources (default: target/release/workspace-agent
#                        when it exists)
#   --image-tar FILE     air-gapped sites: `docker load` a saved workspace image
#                        instead of building one
#   --skip-image         neither build nor load the workspace image
#
# Idempotent: a second run changes nothing. The daemon runs as root (it
# mounts workspace quota images and talks to the Docker socket), so no
# service user is created; agentbox.service's hardening section says what
# confines it instead. An edited /etc/agentbox/agentbox.toml is never
# overwritten: the new example goes beside it as agentbox.toml.new.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
ROOT=
START=1
BINARY=
AGENT_BINARY=
IMAGE_TAR=
SKIP_IMAGE=0
CHANGED=0

say() { printf 'install: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

while (($#)); do
  case "$1" in
    --root) ROOT=${2:?--root needs a directory}; shift ;;
    --no-start) START=0 ;;
    --binary) BINARY=${2:?--binary needs a path}; shift ;;
    --agent-binary) AGENT_BINARY=${2:?--agent-binary needs a path}; shift ;;
    --image-tar) IMAGE_TAR=${2:?--image-tar needs a file}; shift ;;
    --skip-image) SKIP_IMAGE=1 ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (--help)" ;;
  esac
  shift
done

[[ $(id -u) == 0 ]] || die "run as root (files go to /usr, /etc and /var)"
if [[ -n $ROOT ]]; then
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
  [[ $ROOT != / ]] || ROOT=
fi

if [[ -z $BINARY ]]; then
  for candidate in "$SRC/target/release/agentbox" "$SRC/target/debug/agentbox"; do
    if [[ -x $candidate ]]; then BINARY=$candidate; break; fi
  done
fi
[[ -n $BINARY && -x $BINARY ]] ||
  die "no agentbox binary (cargo build --release, or --binary PATH)"
if [[ -z $AGENT_BINARY && -x $SRC/target/release/workspace-agent ]]; then
  AGENT_BINARY=$SRC/target/release/workspace-agent
fi
[[ -z $AGENT_BINARY || -x $AGENT_BINARY ]] || die "--agent-binary $AGENT_BINARY is not executable"

# put MODE SRC DEST: copy when the content or mode differs, else leave the
# file alone (so a second run is a no-op and says so).
put() {
  local mode=$1 from=$2 to=$ROOT$3
  if [[ -f $to ]] && cmp -s "$from" "$to" &&
    [[ $(stat -c '%a %u %g' "$to") == "${mode#0} 0 0" ]]; then
    return 0
  fi
  install -D -m "$mode" -o root -g root "$from" "$to"
  say "installed $3"
  CHANGED=$((CHANGED + 1))
}

# dir MODE PATH: a root-owned directory with exactly this mode.
dir() {
  local mode=$1 path=$ROOT$2
  if [[ -d $path && $(stat -c '%a %u %g' "$path") == "${mode#0} 0 0" ]]; then
    return 0
  fi
  install -d -m "$mode" -o root -g root "$path"
  say "directory $2 ($mode)"
  CHANGED=$((CHANGED + 1))
}

# config FILE: /etc/agentbox/FILE from the shipped example. Installed when
# absent, or when it is still the previous version's unedited example;
# otherwise the operator edited it and the new example goes to FILE.new.
config() {
  local name=$1 new=$2 pristine=$3 target=$ROOT/etc/agentbox/$1
  if [[ ! -e $target ]] || { [[ -s $pristine ]] && cmp -s "$target" "$pristine"; }; then
    put 0644 "$new" "/etc/agentbox/$name"
  elif ! cmp -s "$target" "$new"; then
    if ! cmp -s "$new" "$target.new" 2>/dev/null; then
      install -m 0644 -o root -g root "$new" "$target.new"
      say "kept your edited /etc/agentbox/$name; the new example is /etc/agentbox/$name.new (diff them)"
      CHANGED=$((CHANGED + 1))
    fi
  fi
}

SHARE=/usr/share/agentbox

# The previous example, to tell an unedited config from an edited one.
PRISTINE=$(mktemp)
trap 'rm -f "$PRISTINE"' EXIT
if [[ -f $ROOT$SHARE/agentbox.toml.example ]]; then
  cp "$ROOT$SHARE/agentbox.toml.example" "$PRISTINE"
else
  : >"$PRISTINE"
fi

say "== files${ROOT:+ under $ROOT}"
put 0755 "$BINARY" /usr/bin/agentbox
put 0644 "$HERE/agentbox.service" /lib/systemd/system/agentbox.service
dir 0755 /etc/agentbox
put 0644 "$HERE/agentbox.toml.example" "$SHARE/agentbox.toml.example"
config agentbox.toml "$HERE/agentbox.toml.example" "$PRISTINE"
# Secrets file: created once, root-only, never rewritten.
if [[ ! -e $ROOT/etc/agentbox/agentbox.env ]]; then
  put 0600 "$HERE/debian/agentbox.env" /etc/agentbox/agentbox.env
fi
put 0644 "$HERE/debian/agentbox.env" "$SHARE/agentbox.env"
put 0644 "$HERE/docker-daemon.json" "$SHARE/docker-daemon.json"
put 0755 "$HERE/register-gvisor.sh" "$SHARE/register-gvisor.sh"
put 0644 "$SRC/seccomp/workspace.json" "$SHARE/seccomp/workspace.json"
put 0644 "$SRC/apparmor/workspace-container" /etc/apparmor.d/workspace-container
for f in "$HERE"/monitoring/*; do
  put 0644 "$f" "$SHARE/monitoring/$(basename "$f")"
done
# The image's build context, without the agent's sources: the agent comes
# prebuilt (build-image.sh picks up the copy beside it).
while IFS= read -r -d '' f; do
  rel=${f#"$SRC/workspace-base/"}
  mode=0644
  [[ -x $f ]] && mode=0755
  put "$mode" "$f" "$SHARE/workspace-base/$rel"
done < <(find "$SRC/workspace-base" \( -path "$SRC/workspace-base/agent" -o -name .build \) -prune \
  -o -type f -print0 | sort -z)
if [[ -n $AGENT_BINARY ]]; then
  put 0755 "$AGENT_BINARY" "$SHARE/workspace-base/workspace-agent"
fi
for doc in operations configuration isolation audit-events metrics; do
  put 0644 "$SRC/docs/$doc.md" "/usr/share/doc/agentbox/$doc.md"
done
# systemd creates these too (StateDirectory=, LogsDirectory=); making them
# here keeps the modes right for a daemon started by hand.
dir 0700 /var/lib/agentbox
dir 0750 /var/log/agentbox
say "$CHANGED change(s)"

if [[ -n $ROOT ]]; then
  say "scratch root: no systemctl, no image, no AppArmor load, no doctor"
  exit 0
fi

say "== AppArmor"
if [[ $(cat /sys/module/apparmor/parameters/enabled 2>/dev/null) == Y ]] &&
  command -v apparmor_parser >/dev/null; then
  apparmor_parser -r -W /etc/apparmor.d/workspace-container
  say "profile workspace-container loaded"
else
  say "this kernel has no AppArmor: containers confine themselves with Landlock instead"
fi

say "== gVisor runtime"
# Registers runsc with the engine when it is installed (a no-op otherwise).
"$SHARE/register-gvisor.sh" || say "registering runsc failed; the gVisor tier stays unavailable (agentbox doctor)"

say "== workspace image"
if ((SKIP_IMAGE)); then
  say "skipped (--skip-image); build it later with: agentbox image build"
elif [[ -n $IMAGE_TAR ]]; then
  docker load -i "$IMAGE_TAR"
elif [[ -x $SHARE/workspace-base/workspace-agent ]]; then
  # Air-gapped sites: the base comes from debootstrap against the host's
  # own apt mirror (AGENTBOX_DEBIAN_MIRROR), npm from NPM_REGISTRY.
  "$SHARE/workspace-base/build-image.sh"
else
  "$SRC/workspace-base/build-image.sh"
fi

say "== service"
if [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
  if ((START)); then
    systemctl enable agentbox.service
    # A running daemon picks up a new binary or unit only on restart.
    systemctl restart agentbox.service
    say "agentbox.service enabled and (re)started"
  else
    systemctl enable agentbox.service
    say "agentbox.service enabled, not started (--no-start): systemctl start agentbox"
  fi
else
  say "systemd is not running on this host (no /run/systemd/system, e.g. inside a container):"
  say "not enabling or starting agentbox.service; run it by hand with:"
  say "  agentbox serve --config /etc/agentbox/agentbox.toml"
fi

say "== doctor"
/usr/bin/agentbox doctor --config /etc/agentbox/agentbox.toml
