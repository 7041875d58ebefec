//! Which client a call counts under for the per-address limits, when a
//! balancer stands between clients and the service.
//!
//! Behind a balancer every call's TCP peer is the balancer, so every client
//! would share one address's budget. The addresses listed in
//! `TRUSTED_PROXIES` are believed about the client in `x-forwarded-for`:
//! the entries are read from the right (the nearest hop) and the first one
//! that is not itself a trusted proxy is the client. Nothing else is
//! believed, so no client can pick its own address.

use std::{fmt, net::IpAddr, str::FromStr};

/// Addresses and networks (`10.0.0.0/8`, `::1`) of trusted proxies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Network>);

/// One network: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(net.into(), self.prefix, 128) == masked(ip.into(), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The leading `prefix` bits of a `width`-bit address.
fn masked(bits: u128, prefix: u8, width: u32) -> u128 {
    let drop = width - u32::from(prefix);
    bits.checked_shr(drop).unwrap_or(0)
}

impl TrustedProxies {
    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(ip))
    }

    /// The client behind `peer`, given the `x-forwarded-for` value the call
    /// carried: `peer` itself unless it is a trusted proxy.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let mut client = peer;
        if !self.trusts(client) {
            return client;
        }
        let hops = forwarded_for.unwrap_or_default().rsplit(',');
        for hop in hops {
            let Ok(hop) = hop.trim().parse::<IpAddr>() else {
                // Unreadable: the last address known is as far as the
                // trusted chain reaches.
                return client;
            };
            client = hop;
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let mut networks = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (address, prefix) = match item.split_once('/') {
                Some((address, prefix)) => (address, Some(prefix)),
                None => (item, None),
            };
            let address: IpAddr = address
                .parse()
                .map_err(|_| format!("{item:?} is not an address or network"))?;
            let width = if address.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => width,
                Some(prefix) => prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= width)
                    .ok_or_else(|| format!("{item:?}: the prefix must be 0 to {width}"))?,
            };
            networks.push(Network { address, prefix });
        }
        Ok(Self(networks))
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|n| format!("{}/{}", n.address, n.prefix))
            .collect();
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            proxies.client(ip("192.0.2.1"), Some("198.51.100.7")),
            ip("192.0.2.1")
        );
        let none = TrustedProxies::default();
        assert!(none.is_empty());
        assert_eq!(
            none.client(ip("10.0.0.1"), Some("198.51.100.7")),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() {
        let proxies: TrustedProxies = "10.0.0.0/8, 127.0.0.1".parse().unwrap();
        // A client's own claim on the left is not believed.
        assert_eq!(
            proxies.client(ip("10.1.2.3"), Some("203.0.113.9, 198.51.100.7")),
            ip("198.51.100.7")
        );
        // Two proxies in a row.
        assert_eq!(
            proxies.client(ip("127.0.0.1"), Some("198.51.100.7, 10.0.0.2")),
            ip("198.51.100.7")
        );
        // A mapped IPv4 peer is the same address.
        assert_eq!(
            proxies.client(ip("::ffff:127.0.0.1"), Some("198.51.100.7")),
            ip("198.51.100.7")
        );
        // Nothing forwarded, or nonsense: the proxy itself.
        assert_eq!(proxies.client(ip("10.0.0.5"), None), ip("10.0.0.5"));
        assert_eq!(
            proxies.client(ip("10.0.0.5"), Some("nonsense")),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn lists_parse_and_bad_ones_say_why() {
        let proxies: TrustedProxies = "::1, 172.16.0.0/12,".parse().unwrap();
        assert_eq!(proxies.to_string(), "::1/128,172.16.0.0/12");
        assert!(proxies.trusts(ip("172.31.255.255")));
        assert!(!proxies.trusts(ip("172.32.0.0")));
        assert!(
            "0.0.0.0/0"
                .parse::<TrustedProxies>()
                .unwrap()
                .trusts(ip("8.8.8.8"))
        );
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("example.com".parse::<TrustedProxies>().is_err());
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
    }
}
