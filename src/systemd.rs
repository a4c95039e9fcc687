//! systemd's service notification protocol (`sd_notify(3)`) for
//! `Type=notify`: `READY=1` once the daemon serves, `RELOADING=1` and
//! `READY=1` around a SIGHUP reload, `STOPPING=1` when it drains, and
//! `WATCHDOG=1` pings while `WatchdogSec=` is set.
//!
//! The protocol is one datagram per message to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading
//! `@`), so it is written here with std's `UnixDatagram` rather than
//! pulled in as a dependency. Without `$NOTIFY_SOCKET` (not started by
//! systemd) every call does nothing.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub(crate) enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is not a socket path or @abstract name")]
    Address(String),
    #[error("cannot send to NOTIFY_SOCKET: {0}")]
    Send(io::Error),
}

/// Where notifications go; `None` when not run by systemd.
#[derive(Debug)]
pub(crate) struct Notifier {
    target: Option<SocketAddr>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`. A malformed value is logged and ignored:
    /// systemd will then time the start out, which names the cause better
    /// than refusing to start here would.
    pub(crate) fn from_env() -> Self {
        let target = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
            .and_then(|s| match parse_address(&s) {
                Ok(a) => Some(a),
                Err(error) => {
                    tracing::warn!(message = "Ignoring NOTIFY_SOCKET.", %error);
                    None
                }
            });
        Self { target }
    }

    /// A notifier sending to `addr`, for tests.
    #[cfg(test)]
    pub(crate) fn to_address(addr: &str) -> Result<Self, NotifyError> {
        Ok(Self {
            target: Some(parse_address(addr)?),
        })
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Start-up is over (state reconciled, pool refill started, listeners
    /// bound): `systemctl start` returns and dependent units may start.
    pub(crate) fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload begins; [`Notifier::ready`] ends it. `MONOTONIC_USEC` is
    /// what systemd 253's `Type=notify-reload` requires; older managers
    /// ignore the field.
    pub(crate) fn reloading(&self) {
        self.send_logged(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=Reloading configuration",
            monotonic_usec()
        ));
    }

    /// The daemon drains: systemd shows "deactivating" and waits up to
    /// `TimeoutStopSec=` instead of assuming the process hung.
    pub(crate) fn stopping(&self) {
        self.send_logged("STOPPING=1\nSTATUS=Draining");
    }

    pub(crate) fn watchdog(&self) {
        self.send_logged("WATCHDOG=1");
    }

    /// Sends one message; `Ok` without a socket.
    pub(crate) fn send(&self, message: &str) -> Result<(), NotifyError> {
        let Some(addr) = &self.target else {
            return Ok(());
        };
        let socket = UnixDatagram::unbound().map_err(NotifyError::Send)?;
        socket
            .send_to_addr(message.as_bytes(), addr)
            .map_err(NotifyError::Send)?;
        Ok(())
    }

    /// Notification failures never stop the daemon: systemd notices a
    /// missing READY or WATCHDOG by itself.
    fn send_logged(&self, message: &str) {
        if let Err(error) = self.send(message) {
            tracing::warn!(message = "systemd notification failed.", %error);
        }
    }

    /// How often to ping the watchdog while the runtime runs, so a wedged
    /// executor (no task scheduled for a whole interval) gets the daemon
    /// restarted; `None` without `WatchdogSec=` or outside systemd.
    pub(crate) fn watchdog_every(&self) -> Option<Duration> {
        let every = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )?;
        self.is_enabled().then_some(every)
    }
}

/// Pure: how often to ping, given `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
/// Half the interval, as `sd_watchdog_enabled(3)` recommends; `None` when
/// the watchdog is off or meant for another process.
pub(crate) fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    let usec = usec?.trim().parse::<u64>().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// `@name` is an abstract socket, anything else absolute is a path.
fn parse_address(s: &str) -> Result<SocketAddr, NotifyError> {
    let bad = || NotifyError::Address(s.to_owned());
    if let Some(name) = s.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())
    } else if s.starts_with('/') {
        SocketAddr::from_pathname(s).map_err(|_| bad())
    } else {
        Err(bad())
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn path_socket_gets_each_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::to_address(path.to_str().expect("utf-8")).expect("address");
        n.ready("Serving");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=Serving");
        n.reloading();
        let r = recv(&sock);
        assert!(r.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{r}");
        n.stopping();
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=Draining");
        n.watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn abstract_socket_name_starts_with_at() {
        let name = format!("agentbox-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        let n = Notifier::to_address(&format!("@{name}")).expect("address");
        n.send("STATUS=x").expect("send");
        assert_eq!(recv(&sock), "STATUS=x");
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let n = Notifier { target: None };
        assert!(!n.is_enabled());
        n.send("READY=1").expect("no-op");
    }

    #[test]
    fn bad_addresses_are_refused() {
        assert!(Notifier::to_address("relative/path").is_err());
        assert!(Notifier::to_address("vsock:2:1234").is_err());
    }

    #[test]
    fn watchdog_pings_at_half_the_interval_for_this_pid_only() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }
}
