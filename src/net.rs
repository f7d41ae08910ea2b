//! Client addresses: which peers are trusted reverse proxies (`--trusted-proxies`),
//! the client address behind them (`X-Forwarded-For`), and the network a
//! client is throttled by. Pure functions over addresses; no HTTP types.
use std::{fmt, net::IpAddr, str::FromStr};

/// An address block such as `10.0.0.0/8` or `fd00::/8`; a bare address is
/// a block of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block (e.g. 10.0.0.0/8)"))?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4
/// peers) as plain IPv4, so one block matches both spellings.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy;
/// then `X-Forwarded-For` read from the right, skipping trusted proxies, and
/// the first untrusted address is the client (anything left of it is what
/// the client claimed, and is not believed). An entry that is not an address
/// stops the walk at the last address known.
pub fn client_ip<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = peer.map(canonical)?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = forwarded_for
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, possibly with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

/// The network a client is throttled as: its IPv4 address, or its IPv6 /64
/// (one site or machine usually holds a whole /64, so per-address counting
/// would be no limit at all).
pub fn throttle_key(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", std::net::Ipv6Addr::from(net))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.9.8.7")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        let one: Cidr = "192.168.1.5".parse().unwrap();
        assert!(one.contains(ip("192.168.1.5")) && !one.contains(ip("192.168.1.6")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = |v: &'static str| std::iter::once(v);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(Some(ip("203.0.113.9")), xff("1.1.1.1"), &trusted),
            Some(ip("203.0.113.9"))
        );
        // The rightmost untrusted address; what the client prepended is not believed.
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.2")),
                xff("6.6.6.6, 198.51.100.7, 10.0.0.3"),
                &trusted
            ),
            Some(ip("198.51.100.7"))
        );
        // Several header lines read as one list.
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.2")),
                ["6.6.6.6", "198.51.100.7"].into_iter(),
                &trusted
            ),
            Some(ip("198.51.100.7"))
        );
        // No header, or garbage: the last known address.
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), std::iter::empty(), &trusted),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), xff("1.1.1.1, junk"), &trusted),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), xff("[2001:db8::1]:443"), &trusted),
            Some(ip("2001:db8::1"))
        );
        // Nothing trusted: the peer, always.
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), xff("1.1.1.1"), &[]),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64() {
        assert_eq!(
            throttle_key(ip("2001:db8:1:2:aaaa::1")),
            throttle_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            throttle_key(ip("2001:db8:1:2::1")),
            throttle_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(throttle_key(ip("::ffff:1.2.3.4")), "1.2.3.4");
    }
}
