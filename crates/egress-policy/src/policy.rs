//! The egress decision for one tenant: which names, ports and addresses
//! a container may reach. Names are decided before any DNS lookup; every
//! address a name resolves to is checked after it.

use crate::addr::{classify_host, forbidden, Cidr, Forbidden, HostKind};
use crate::hostmatch::{normalize, Allowlist, HostName, Pattern};
use std::net::IpAddr;

/// Why the policy refuses a destination; the proxy answers each with its
/// own `Refusal` of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("destination not allowed")]
    DomainNotAllowed,
    #[error("IP address literals are not allowed")]
    IpLiteral,
    #[error("port not allowed")]
    PortNotAllowed,
    #[error("destination resolves to a forbidden address ({})", .0.reason())]
    ForbiddenAddress(Forbidden),
    #[error("destination does not resolve")]
    DnsFailed,
}

/// A destination that passed the name check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Name(HostName),
    /// An address the operator listed, written canonically.
    Ip(IpAddr),
}

impl Destination {
    pub fn host(&self) -> String {
        match self {
            Self::Name(n) => n.to_string(),
            Self::Ip(ip) => ip.to_string(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Policy {
    allow: Allowlist,
    ports: Vec<u16>,
    exempt: Vec<Cidr>,
}

impl Policy {
    pub fn new(patterns: Vec<Pattern>, ports: Vec<u16>, exempt: Vec<Cidr>) -> Self {
        Self {
            allow: Allowlist::new(patterns),
            ports,
            exempt,
        }
    }

    /// Decides on the requested host and port alone, before DNS.
    pub fn check_target(&self, host: &str, port: u16) -> Result<Destination, Denied> {
        let dest = match classify_host(host) {
            HostKind::OddIp => return Err(Denied::IpLiteral),
            HostKind::CanonicalIp(ip) if self.allow.allows_ip(ip) => Destination::Ip(ip),
            HostKind::CanonicalIp(_) => return Err(Denied::IpLiteral),
            HostKind::Name => {
                let name = normalize(host).map_err(|_| Denied::DomainNotAllowed)?;
                if !self.allow.allows_name(&name) {
                    return Err(Denied::DomainNotAllowed);
                }
                Destination::Name(name)
            }
        };
        if !self.ports.contains(&port) {
            return Err(Denied::PortNotAllowed);
        }
        Ok(dest)
    }

    /// Checks one resolved (or listed) address.
    pub fn check_addr(&self, ip: IpAddr) -> Result<(), Denied> {
        if self.exempt.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match forbidden(ip) {
            Some(f) => Err(Denied::ForbiddenAddress(f)),
            None => Ok(()),
        }
    }

    /// The addresses of a resolved name that may be connected to. Any
    /// forbidden address refuses the whole name: a public name that also
    /// answers with a private or metadata address is being used to reach
    /// inside (DNS rebinding), not a mistake to route around.
    pub fn check_addrs(&self, ips: &[IpAddr]) -> Result<(), Denied> {
        if ips.is_empty() {
            return Err(Denied::DnsFailed);
        }
        ips.iter().try_for_each(|ip| self.check_addr(*ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            ["allowed.test", "*.pkg.test", "203.0.113.9", "10.1.2.3"]
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .collect(),
            vec![443, 80],
            vec!["127.0.0.0/8".parse().unwrap()],
        )
    }

    #[test]
    fn names_before_dns() {
        let p = policy();
        assert!(
            matches!(p.check_target("Allowed.TEST.", 443), Ok(Destination::Name(n)) if n.as_str() == "allowed.test")
        );
        assert!(p.check_target("x.pkg.test", 80).is_ok());
        assert_eq!(
            p.check_target("pkg.test", 443),
            Err(Denied::DomainNotAllowed)
        );
        assert_eq!(
            p.check_target("evil.test", 443),
            Err(Denied::DomainNotAllowed)
        );
        assert_eq!(
            p.check_target("allowed.test", 22),
            Err(Denied::PortNotAllowed)
        );
        assert_eq!(p.check_target("127.0.0.1", 443), Err(Denied::IpLiteral));
        assert_eq!(p.check_target("2130706433", 443), Err(Denied::IpLiteral));
        assert_eq!(p.check_target("[::1]", 443), Err(Denied::IpLiteral));
        assert_eq!(
            p.check_target("0xcb.0.113.9", 443),
            Err(Denied::IpLiteral),
            "listed, but not canonical"
        );
        assert_eq!(
            p.check_target("203.0.113.9", 443),
            Ok(Destination::Ip("203.0.113.9".parse().unwrap()))
        );
    }

    #[test]
    fn addresses_after_dns() {
        let p = policy();
        assert!(p.check_addr("127.0.0.1".parse().unwrap()).is_ok(), "exempt");
        assert_eq!(
            p.check_addr("169.254.169.254".parse().unwrap()),
            Err(Denied::ForbiddenAddress(Forbidden::Metadata))
        );
        assert_eq!(
            p.check_addr("10.1.2.3".parse().unwrap()),
            Err(Denied::ForbiddenAddress(Forbidden::Private)),
            "a listed literal still needs its range exempted"
        );
        assert_eq!(
            p.check_addrs(&["8.8.8.8".parse().unwrap(), "10.0.0.1".parse().unwrap()]),
            Err(Denied::ForbiddenAddress(Forbidden::Private))
        );
        assert!(p.check_addrs(&["8.8.8.8".parse().unwrap()]).is_ok());
        assert_eq!(p.check_addrs(&[]), Err(Denied::DnsFailed));
    }
}
