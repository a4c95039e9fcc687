//! Addresses: IP literals in every spelling a resolver or URL parser might
//! accept, the ranges a container may never reach, and the operator's
//! exemptions from that rule.
//!
//! The forward proxy decides on names, not addresses. A host that *looks*
//! like an address in any spelling (`2130706433`, `0x7f.1`, `0177.0.0.1`,
//! `127.1`, `[::ffff:127.0.0.1]`) is an IP literal and is refused unless the
//! operator lists that address, in its canonical spelling, as allowed.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// What kind of host string a request named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// A DNS name (not yet normalised).
    Name,
    /// An address written the canonical way (`1.2.3.4`, `[2001:db8::1]`).
    CanonicalIp(IpAddr),
    /// An address in another spelling (decimal, hex, octal, short form,
    /// zone id, ...), or something that a URL parser would read as one.
    OddIp,
}

/// Classifies a host as it appeared in a request target (IPv6 in brackets).
pub fn classify_host(host: &str) -> HostKind {
    if let Some(inner) = host.strip_prefix('[') {
        let Some(inner) = inner.strip_suffix(']') else {
            return HostKind::OddIp;
        };
        return match Ipv6Addr::from_str(inner) {
            // `Ipv6Addr` parsing accepts only the standard forms, so a
            // parsed value printed back tells canonical from odd spellings
            // only up to case and zero compression; both are harmless.
            Ok(v6) => HostKind::CanonicalIp(IpAddr::V6(v6)),
            // Zone ids (`fe80::1%25eth0`) and anything else in brackets.
            Err(_) => HostKind::OddIp,
        };
    }
    if host.contains(':') {
        // An unbracketed IPv6 literal, or junk; never a DNS name.
        return HostKind::OddIp;
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if let Ok(v4) = Ipv4Addr::from_str(trimmed) {
        // Rust's parser accepts only four decimal octets without leading
        // zeros: the canonical spelling (a trailing dot is not canonical).
        return if trimmed.len() == host.len() {
            HostKind::CanonicalIp(IpAddr::V4(v4))
        } else {
            HostKind::OddIp
        };
    }
    if inet_aton(trimmed).is_some() || ends_in_a_number(trimmed) {
        return HostKind::OddIp;
    }
    HostKind::Name
}

/// The address `inet_aton(3)` (and WHATWG URL parsing) would read from
/// `s`: one to four parts, each decimal, octal (leading `0`) or hex (`0x`).
pub fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    if s.is_empty() {
        return None;
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        nums.push(parse_aton_part(p)?);
    }
    let (last, init) = nums.split_last()?;
    for n in init {
        if *n > 255 {
            return None;
        }
    }
    let bits_left = 8 * (4 - init.len() as u32);
    if bits_left < 32 && *last >= (1u64 << bits_left) {
        return None;
    }
    if *last > u64::from(u32::MAX) {
        return None;
    }
    let mut v: u64 = 0;
    for (i, n) in init.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    v |= last;
    Some(Ipv4Addr::from(v as u32))
}

fn parse_aton_part(p: &str) -> Option<u64> {
    if p.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        (h, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() {
        // "0x" alone is zero to inet_aton.
        return (radix == 16).then_some(0);
    }
    if digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// WHATWG URL's "ends in a number" rule: a host whose last label is all
/// digits or `0x`-hex is parsed as IPv4 (and fails if it is not one). Such
/// a name is never a real DNS name, so it is treated as an odd address.
fn ends_in_a_number(s: &str) -> bool {
    let last = s.rsplit('.').next().unwrap_or("");
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    last.strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why an address may not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forbidden {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    SharedCgnat,
    Metadata,
    Multicast,
    Reserved,
    Documentation,
    /// IPv6 that embeds IPv4 (mapped, NAT64, 6to4, Teredo, compatible).
    Ipv4Embedded,
}

impl Forbidden {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified_address",
            Self::Loopback => "loopback_address",
            Self::Private => "private_address",
            Self::LinkLocal => "link_local_address",
            Self::SharedCgnat => "cgnat_address",
            Self::Metadata => "metadata_address",
            Self::Multicast => "multicast_address",
            Self::Reserved => "reserved_address",
            Self::Documentation => "documentation_address",
            Self::Ipv4Embedded => "ipv4_embedded_ipv6_address",
        }
    }
}

/// The cloud metadata endpoints (AWS, GCP, Azure, ...; IPv4 and AWS's IPv6).
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// `Some(reason)` when `ip` lies in a range a container may not reach.
pub fn forbidden(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<Forbidden> {
    let [a, b, c, _] = ip.octets();
    let f = if ip == METADATA_V4 {
        Forbidden::Metadata
    } else if a == 0 {
        Forbidden::Unspecified
    } else if a == 127 {
        Forbidden::Loopback
    } else if a == 10 || (a == 172 && (16..32).contains(&b)) || (a == 192 && b == 168) {
        Forbidden::Private
    } else if a == 169 && b == 254 {
        Forbidden::LinkLocal
    } else if a == 100 && (64..128).contains(&b) {
        Forbidden::SharedCgnat
    } else if (224..240).contains(&a) {
        Forbidden::Multicast
    } else if a >= 240 || (a == 192 && b == 0 && c == 0) || (a == 198 && (b == 18 || b == 19)) {
        // 240/4 and broadcast, IETF protocol assignments, benchmarking.
        Forbidden::Reserved
    } else if (a == 192 && b == 0 && c == 2)
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        Forbidden::Documentation
    } else {
        return None;
    };
    Some(f)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<Forbidden> {
    let s = ip.segments();
    let f = if ip == METADATA_V6 {
        Forbidden::Metadata
    } else if ip.is_unspecified() {
        Forbidden::Unspecified
    } else if ip.is_loopback() {
        Forbidden::Loopback
    } else if s[0..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || s[5] == 0) {
        // ::ffff:0:0/96 (mapped) and ::/96 (deprecated compatible form).
        Forbidden::Ipv4Embedded
    } else if (s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0, 0, 0, 0] || s[2] == 1))
        || s[0] == 0x2002
        || (s[0] == 0x2001 && s[1] == 0)
    {
        // NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16), Teredo
        // (2001::/32): each carries an IPv4 address a gateway would reach.
        Forbidden::Ipv4Embedded
    } else if s[0] & 0xfe00 == 0xfc00 {
        Forbidden::Private
    } else if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
        Forbidden::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        Forbidden::Multicast
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Forbidden::Documentation
    } else if (s[0] == 0x100 && s[1..4] == [0, 0, 0]) || (s[0] == 0x2001 && s[1] < 0x200) {
        // Discard-only 100::/64; 2001::/23 holds IETF special purposes.
        Forbidden::Reserved
    } else {
        return None;
    };
    Some(f)
}

/// An address range in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare
/// address is its own /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(IpNet);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a CIDR range (like 127.0.0.0/8 or fd00::/8): {0}")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let Some((ip, prefix)) = s.split_once('/') else {
            return s
                .parse::<IpAddr>()
                .map(|ip| Self(ip.into()))
                .map_err(|_| err());
        };
        let ip: IpAddr = ip.parse().map_err(|_| err())?;
        // Digits only: `u8`'s parser would also take `+8`.
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let prefix = prefix.parse::<u8>().map_err(|_| err())?;
        IpNet::new(ip, prefix).map(Self).map_err(|_| err())
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    #[test]
    fn every_spelling_of_an_address_is_an_ip_literal() {
        for odd in [
            "2130706433",
            "0x7f000001",
            "0x7F.1",
            "0177.0.0.1",
            "127.1",
            "127.0.1",
            "017700000001",
            "127.0.0.1.",
            "0x7f.0x0.0x0.0x1",
            "1.2.3.4.5",
            "example.0x1f",
            "example.123",
            "[::1",
            "::1",
            "[fe80::1%25eth0]",
            "169.254.169.254.",
            "0251.0376.0251.0376",
        ] {
            assert_eq!(classify_host(odd), HostKind::OddIp, "{odd}");
        }
        assert_eq!(
            classify_host("127.0.0.1"),
            HostKind::CanonicalIp(v4("127.0.0.1"))
        );
        assert_eq!(
            classify_host("[::ffff:127.0.0.1]"),
            HostKind::CanonicalIp("::ffff:127.0.0.1".parse().unwrap())
        );
        for name in [
            "example.com",
            "a-1.example",
            "123.example.com",
            "x0x1.com",
            "0xzz",
        ] {
            assert_eq!(classify_host(name), HostKind::Name, "{name}");
        }
    }

    #[test]
    fn inet_aton_reads_what_libc_reads() {
        assert_eq!(inet_aton("2130706433"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(inet_aton("127.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(inet_aton("0x7f.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(inet_aton("0177.0.0.01"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(inet_aton("10.0x10000"), Some("10.1.0.0".parse().unwrap()));
        assert_eq!(inet_aton("10.0x1000000"), None, "last part too large");
        assert_eq!(inet_aton("256.1.1.1"), None);
        assert_eq!(inet_aton("08.1.1.1"), None, "8 is not octal");
        assert_eq!(inet_aton("1..1"), None);
        assert_eq!(inet_aton("4294967296"), None);
        assert_eq!(inet_aton("4294967295"), Some(Ipv4Addr::BROADCAST));
    }

    #[test]
    fn forbidden_ranges() {
        use Forbidden::*;
        let cases: &[(&str, Option<Forbidden>)] = &[
            ("127.0.0.1", Some(Loopback)),
            ("10.1.2.3", Some(Private)),
            ("172.31.0.1", Some(Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Private)),
            ("169.254.169.254", Some(Metadata)),
            ("169.254.1.1", Some(LinkLocal)),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.128.0.1", None),
            ("224.0.0.1", Some(Multicast)),
            ("255.255.255.255", Some(Reserved)),
            ("0.0.0.0", Some(Unspecified)),
            ("8.8.8.8", None),
            ("::1", Some(Loopback)),
            ("::", Some(Unspecified)),
            ("::ffff:127.0.0.1", Some(Ipv4Embedded)),
            ("::ffff:8.8.8.8", Some(Ipv4Embedded)),
            ("::127.0.0.1", Some(Ipv4Embedded)),
            ("64:ff9b::a9fe:a9fe", Some(Ipv4Embedded)),
            ("64:ff9b:1::1", Some(Ipv4Embedded)),
            ("2002:7f00:1::", Some(Ipv4Embedded)),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some(Ipv4Embedded)),
            ("fd00:ec2::254", Some(Metadata)),
            ("fd12::1", Some(Private)),
            ("fe80::1", Some(LinkLocal)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("2606:4700::1111", None),
        ];
        for (ip, want) in cases {
            assert_eq!(forbidden(ip.parse().unwrap()), *want, "{ip}");
        }
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(c.contains(v4("127.9.9.9")));
        assert!(!c.contains(v4("128.0.0.1")));
        assert!(!c.contains("::1".parse().unwrap()));
        let one: Cidr = "10.0.0.5".parse().unwrap();
        assert!(one.contains(v4("10.0.0.5")) && !one.contains(v4("10.0.0.6")));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("fd00:ec2::254".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x/8", "10.0.0.0/", "10.0.0.0/+8", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
