//! Loopback address pools for pod IPs (127.2.0.0/16) and Service cluster IPs (127.1.0.0/16).
//!
//! Linux routes all of 127.0.0.0/8 to the loopback device, so processes can bind these addresses
//! without any configuration. Pure bookkeeping; no sockets here.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// An IPv4 range given as a base address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Range {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Range {
    pub const fn new(base: Ipv4Addr, prefix: u8) -> Self {
        Self { base, prefix }
    }

    fn bounds(&self) -> (u32, u32) {
        let size = 1u64 << (32 - u32::from(self.prefix.min(32)));
        let start = u32::from(self.base) & !((size - 1) as u32);
        (start, start.saturating_add((size - 1) as u32))
    }

    /// Parses `a.b.c.d/n`, the range having to lie in the loopback network 127.0.0.0/8.
    pub fn parse_loopback(text: &str) -> Result<Self, String> {
        let (ip, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not of the form a.b.c.d/n"))?;
        let base: Ipv4Addr = ip.parse().map_err(|e| format!("{ip:?}: {e}"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("prefix in {text:?} must be between 8 and 30"))?;
        if !base.is_loopback() {
            return Err(format!("{text:?} is not a loopback range (127.0.0.0/8)"));
        }
        Ok(Self::new(base, prefix))
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (lo, hi) = self.bounds();
        (lo..=hi).contains(&u32::from(ip))
    }

    /// The lowest address in the range that is not in `used`, skipping the network address and the
    /// first host (`.0.0`, `.0.1`) and any address whose last octet is 0 or 255.
    pub fn first_free(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let (lo, hi) = self.bounds();
        (lo.saturating_add(2)..hi).map(Ipv4Addr::from).find(|ip| {
            let last = ip.octets()[3];
            last != 0 && last != 255 && !used.contains(ip)
        })
    }
}

/// Whether every TCP port can be bound on `ip` right now, i.e. nobody on this machine listens
/// there. A cheap guard against several kubesims sharing the machine's loopback ranges.
pub fn ports_free(ip: Ipv4Addr, ports: &[u16]) -> bool {
    ports
        .iter()
        .all(|p| std::net::TcpListener::bind((ip, *p)).is_ok())
}

/// A pool handing out addresses from a range, remembering which are taken.
#[derive(Debug)]
pub struct IpPool {
    range: Ipv4Range,
    used: BTreeSet<Ipv4Addr>,
}

impl IpPool {
    pub fn new(range: Ipv4Range) -> Self {
        Self {
            range,
            used: BTreeSet::new(),
        }
    }

    /// Takes the lowest free address.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let ip = self.range.first_free(&self.used)?;
        self.used.insert(ip);
        Some(ip)
    }

    /// Takes the lowest free address for which `usable` holds. Addresses found unusable stay
    /// reserved: something else on this machine (another kubesim, a process still shutting
    /// down) holds them.
    pub fn allocate_where(&mut self, usable: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        for _ in 0..256 {
            let ip = self.allocate()?;
            if usable(ip) {
                return Some(ip);
            }
        }
        None
    }

    /// Marks an address as taken (e.g. found on an existing object at start-up).
    pub fn reserve(&mut self, ip: Ipv4Addr) {
        if self.range.contains(ip) {
            self.used.insert(ip);
        }
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_skips_reserved_hosts_and_reuses_released_addresses() {
        // Pods must never get the network address or .1, and a freed address becomes available again.
        let mut pool = IpPool::new(Ipv4Range::new(Ipv4Addr::new(127, 2, 0, 0), 16));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 2, 0, 2)));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 2, 0, 3)));
        pool.release(Ipv4Addr::new(127, 2, 0, 2));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 2, 0, 2)));
    }

    #[test]
    fn only_loopback_ranges_parse() {
        // kubesim never hands out addresses outside 127.0.0.0/8.
        assert_eq!(
            Ipv4Range::parse_loopback("127.20.0.0/16"),
            Ok(Ipv4Range::new(Ipv4Addr::new(127, 20, 0, 0), 16))
        );
        assert!(Ipv4Range::parse_loopback("10.0.0.0/16").is_err());
        assert!(Ipv4Range::parse_loopback("127.0.0.0/4").is_err());
        assert!(Ipv4Range::parse_loopback("127.0.0.0").is_err());
    }

    #[test]
    fn addresses_in_use_elsewhere_are_skipped() {
        // An address someone else listens on is never handed to a pod.
        let taken = std::net::TcpListener::bind((Ipv4Addr::new(127, 9, 0, 2), 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let mut pool = IpPool::new(Ipv4Range::new(Ipv4Addr::new(127, 9, 0, 0), 24));
        let ip = pool.allocate_where(|ip| ports_free(ip, &[port]));
        assert_eq!(ip, Some(Ipv4Addr::new(127, 9, 0, 3)));
        assert_eq!(
            pool.allocate(),
            Some(Ipv4Addr::new(127, 9, 0, 4)),
            ".2 stays reserved"
        );
    }

    #[test]
    fn an_exhausted_range_allocates_nothing() {
        // A full pool reports exhaustion instead of handing out a duplicate.
        let mut pool = IpPool::new(Ipv4Range::new(Ipv4Addr::new(127, 3, 0, 0), 30));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 3, 0, 2)));
        assert_eq!(pool.allocate(), None);
        assert!(!pool.range.contains(Ipv4Addr::new(127, 3, 0, 4)));
    }
}
