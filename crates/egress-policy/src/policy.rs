//! The egress decision for one tenant: which names, ports and addresses
//! a container may reach. Names are decided before any DNS lookup; every
//! address a name resolves to is checked after it.

use crate::addr::{classify_host, forbidden, Cidr, Forbidden, HostKind};
use crate::hostmatch::{normalize, Allowlist, HostName, Pattern};
use crate::rules::Rule;
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

/// How the proxy may carry traffic to an allowed destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access<'p> {
    /// Opaque bytes (a blind CONNECT tunnel, or plain HTTP unjudged):
    /// only names matched, by this rule (`allowed_domain`, `allowed_ip` or
    /// a domain-only rule's name).
    Blind(&'p str),
    /// Every request is judged by these rules, in order (at least one of
    /// them inspects); for TLS the proxy must terminate it to see them.
    Inspect(Vec<&'p Rule>),
}

#[derive(Clone, Debug, Default)]
pub struct Policy {
    allow: Allowlist,
    ports: Vec<u16>,
    exempt: Vec<Cidr>,
    /// Tried in order: a tenant's rules before the global ones.
    rules: Vec<Rule>,
}

impl Policy {
    pub fn new(patterns: Vec<Pattern>, ports: Vec<u16>, exempt: Vec<Cidr>) -> Self {
        Self {
            allow: Allowlist::new(patterns),
            ports,
            exempt,
            rules: Vec::new(),
        }
    }

    /// Adds egress rules; they name hosts as the allowlist does, and may
    /// also judge methods and paths.
    pub fn with_rules(mut self, rules: Vec<Rule>) -> Self {
        self.rules = rules;
        self
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The same policy with only the named rules kept (a run's narrowing;
    /// names it does not hold are ignored here, the caller checks them).
    /// The allowlist goes too when `keep_domains` is false, so a narrowed
    /// run reaches only what its rules name.
    pub fn narrowed(&self, names: &[String], keep_domains: bool) -> Self {
        Self {
            allow: if keep_domains {
                self.allow.clone()
            } else {
                Allowlist::default()
            },
            ports: self.ports.clone(),
            exempt: self.exempt.clone(),
            rules: self
                .rules
                .iter()
                .filter(|r| names.contains(&r.name))
                .cloned()
                .collect(),
        }
    }

    fn rules_for<'p>(&'p self, dest: &Destination) -> Vec<&'p Rule> {
        self.rules
            .iter()
            .filter(|r| match dest {
                Destination::Name(n) => r.matches_name(n),
                Destination::Ip(ip) => r.matches_ip(*ip),
            })
            .collect()
    }

    /// How traffic to a destination that passed [`Self::check_target`]
    /// is carried. A host any inspecting rule names is judged per request
    /// by its rules alone (the allowlist does not open it wider); any
    /// other is a blind tunnel, as before rules existed.
    pub fn access(&self, dest: &Destination) -> Access<'_> {
        let rules = self.rules_for(dest);
        if rules.iter().any(|r| r.inspects()) {
            return Access::Inspect(rules);
        }
        match (rules.first(), dest) {
            (Some(r), _) => Access::Blind(&r.name),
            (None, Destination::Name(_)) => Access::Blind("allowed_domain"),
            (None, Destination::Ip(_)) => Access::Blind("allowed_ip"),
        }
    }

    /// Decides on the requested host and port alone, before DNS.
    pub fn check_target(&self, host: &str, port: u16) -> Result<Destination, Denied> {
        let dest = match classify_host(host) {
            HostKind::OddIp => return Err(Denied::IpLiteral),
            HostKind::CanonicalIp(ip)
                if self.allow.allows_ip(ip) || self.rules.iter().any(|r| r.matches_ip(ip)) =>
            {
                Destination::Ip(ip)
            }
            HostKind::CanonicalIp(_) => return Err(Denied::IpLiteral),
            HostKind::Name => {
                let name = normalize(host).map_err(|_| Denied::DomainNotAllowed)?;
                if !self.allow.allows_name(&name)
                    && !self.rules.iter().any(|r| r.matches_name(&name))
                {
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

    fn rule(name: &str, host: &str, paths: &[&str]) -> Rule {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        Rule::new(name, Pattern::parse(host).unwrap(), &[], &paths, None).unwrap()
    }

    #[test]
    fn rules_open_hosts_and_choose_the_access() {
        let p = policy().with_rules(vec![
            rule("git", "git.test", &["/org/a.git/**"]),
            rule("mirror", "*.mirror.test", &[]),
            rule("wide", "*.pkg.test", &[]),
            rule("lit", "203.0.113.10", &["/x"]),
        ]);
        let dest = |h: &str| p.check_target(h, 443).unwrap();
        assert!(
            matches!(p.access(&dest("git.test")), Access::Inspect(r) if r.len() == 1 && r[0].name == "git")
        );
        assert_eq!(p.access(&dest("a.mirror.test")), Access::Blind("mirror"));
        assert_eq!(
            p.access(&dest("allowed.test")),
            Access::Blind("allowed_domain")
        );
        assert_eq!(
            p.access(&dest("x.pkg.test")),
            Access::Blind("wide"),
            "first rule names it"
        );
        assert_eq!(p.access(&dest("203.0.113.9")), Access::Blind("allowed_ip"));
        assert!(matches!(
            p.access(&dest("203.0.113.10")),
            Access::Inspect(_)
        ));
        assert_eq!(
            p.check_target("mirror.test", 443),
            Err(Denied::DomainNotAllowed)
        );
        assert_eq!(p.check_target("git.test", 22), Err(Denied::PortNotAllowed));

        let narrow = p.narrowed(&["git".to_owned()], false);
        assert!(narrow.check_target("git.test", 443).is_ok());
        assert_eq!(
            narrow.check_target("a.mirror.test", 443),
            Err(Denied::DomainNotAllowed)
        );
        assert_eq!(
            narrow.check_target("allowed.test", 443),
            Err(Denied::DomainNotAllowed)
        );
        assert!(p
            .narrowed(&[], true)
            .check_target("allowed.test", 443)
            .is_ok());
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
