# A throwaway Debian 12 machine with systemd as PID 1, for
# tests/e2e/packaging.rs: the agentbox .deb is installed into it and
# agentbox.service runs under real systemd, hardening and all, against the
# host's Docker engine (socket bind-mounted). Built from the local
# debootstrap base (workspace-base/build-base.sh); never shipped.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      systemd systemd-sysv e2fsprogs procps ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && systemctl mask systemd-logind.service getty.target console-getty.service \
      systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
 && systemctl set-default multi-user.target
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
