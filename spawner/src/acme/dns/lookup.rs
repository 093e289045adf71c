//! Where a challenge record goes ([`super::Dns::locate`]): `_acme-challenge.<name>`, after any
//! CNAME chain (the acme-dns delegation pattern: the record lives in a zone made for it), in
//! the zone that owns that name by its SOA, and the servers the visibility check asks.
//!
//! The zone is what the DNS says, never a guess from the labels (`example.co.uk` has three):
//! an SOA query for the name answers with the zone's SOA in the answer (the name is the apex)
//! or in the authority section (a name below the apex, existing or not); anything else (a
//! CNAME, a referral, nothing) and the query moves one label up. The deciding of each answer
//! ([`cname_of`], [`zone_of`]) is pure; the asking is at the edge ([`Resolvers::ask`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use tracing::debug;

use super::query::{self, DNS_PORT};
use super::wire::{
    self, Message, RData, RCODE_NOERROR, RCODE_NXDOMAIN, TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_NS,
    TYPE_SOA,
};
use super::{Dns, DnsError, Location, Provider, Step};

/// CNAMEs followed from `_acme-challenge.<name>`: a delegation is one hop; a chain longer
/// than this is a mistake, not a setup.
const MAX_CNAME_HOPS: usize = 8;
/// Labels stripped looking for the zone: a challenge name has a handful.
const MAX_ZONE_STEPS: usize = 32;
/// NS names of a zone looked up: real zones have 2 to 6.
const MAX_NS: usize = 8;
/// Servers the visibility check asks.
const MAX_SERVERS: usize = 8;

/// The resolvers asked, in turn, until one answers.
struct Resolvers {
    servers: Vec<SocketAddr>,
}

impl Resolvers {
    /// `dns.resolver`, or the system's (resolv.conf); none: an error telling which flag to give.
    async fn of(dns: &Dns, purpose: &str) -> Result<Resolvers, DnsError> {
        let servers = match dns.resolver {
            Some(resolver) => vec![resolver],
            None => query::system_resolvers().await.map_err(|e| {
                lookup_error(format!(
                    "{purpose}: {e}; give the resolver to ask with --acme-dns-resolver"
                ))
            })?,
        };
        Ok(Resolvers { servers })
    }

    /// Asks each resolver in turn (recursion desired) until one answers NOERROR or NXDOMAIN;
    /// the error names every resolver and what it answered.
    async fn ask(&self, name: &str, qtype: u16) -> Result<Message, String> {
        let mut failures = Vec::new();
        for &server in &self.servers {
            match query::query(server, name, qtype, true).await {
                Ok(m) if matches!(m.header.rcode, RCODE_NOERROR | RCODE_NXDOMAIN) => return Ok(m),
                Ok(m) => failures.push(format!("{server}: {}", wire::rcode_name(m.header.rcode))),
                Err(e) => failures.push(format!("{server}: {e}")),
            }
        }
        Err(format!(
            "{} {} at {}",
            display_name(name),
            wire::type_name(qtype),
            failures.join(", at ")
        ))
    }

    /// The resolvers, for a message (`asked 10.0.0.1:53, 10.0.0.2:53`).
    fn asked(&self) -> String {
        let servers: Vec<String> = self.servers.iter().map(|s| s.to_string()).collect();
        format!("asked {}", servers.join(", "))
    }
}

fn lookup_error(message: String) -> DnsError {
    DnsError {
        step: Step::ZoneLookup,
        cause: message.clone(),
        message,
    }
}

/// The root as "." in messages.
fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "."
    } else {
        name
    }
}

/// [`super::Dns::locate`].
pub(crate) async fn locate(dns: &Dns, name: &str) -> Result<Location, DnsError> {
    let start = format!(
        "_acme-challenge.{}",
        name.trim_end_matches('.').to_ascii_lowercase()
    );
    let resolvers = Resolvers::of(dns, &format!("finding the zone of {start}")).await?;
    let fqdn = follow_cnames(&resolvers, &start).await?;
    let zone = find_zone(&resolvers, &fqdn).await?;
    let servers = servers(dns, &resolvers, &zone).await?;
    let location = Location {
        via_cname: fqdn != start,
        fqdn,
        zone,
        servers,
    };
    debug!(
        name,
        fqdn = %location.fqdn,
        zone = %location.zone,
        via_cname = location.via_cname,
        servers = ?location.servers,
        "dns-01 record located"
    );
    Ok(location)
}

/// The CNAME target of `name` in `answer`, if it has one.
pub(crate) fn cname_of(answer: &Message, name: &str) -> Option<String> {
    answer.answers.iter().find_map(|r| match &r.data {
        RData::Cname(target) if r.name == name => Some(target.clone()),
        _ => None,
    })
}

/// Follows `start`'s CNAME chain to the name that holds the record.
async fn follow_cnames(resolvers: &Resolvers, start: &str) -> Result<String, DnsError> {
    let fail = |what: String| lookup_error(format!("following the CNAME of {start}: {what}"));
    let mut seen = BTreeSet::from([start.to_string()]);
    let mut name = start.to_string();
    for _ in 0..=MAX_CNAME_HOPS {
        let answer = resolvers.ask(&name, TYPE_CNAME).await.map_err(fail)?;
        let Some(target) = cname_of(&answer, &name) else {
            return Ok(name);
        };
        if !seen.insert(target.clone()) {
            return Err(fail(format!("a CNAME loop at {target}")));
        }
        name = target;
    }
    Err(fail(format!("more than {MAX_CNAME_HOPS} CNAMEs in a row")))
}

/// What an SOA answer for `candidate` says about its zone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ZoneAnswer {
    /// The zone's apex (the SOA's owner) and its primary server.
    Zone { apex: String, primary: String },
    /// No SOA for it here: ask for the parent.
    Up,
}

/// Reads an SOA answer for `candidate`: an SOA owned by it in the answer, or in the authority
/// section one owned by it or a name above it (NXDOMAIN, NODATA).
pub(crate) fn zone_of(answer: &Message, candidate: &str) -> ZoneAnswer {
    let soa = |records: &[wire::Record], fits: &dyn Fn(&str) -> bool| {
        records.iter().find_map(|r| match &r.data {
            RData::Soa(soa) if fits(&r.name) => Some(ZoneAnswer::Zone {
                apex: r.name.clone(),
                primary: soa.mname.clone(),
            }),
            _ => None,
        })
    };
    soa(&answer.answers, &|owner| owner == candidate)
        .or_else(|| {
            soa(&answer.authority, &|owner| {
                wire::is_within(candidate, owner)
            })
        })
        .unwrap_or(ZoneAnswer::Up)
}

/// The zone holding `fqdn`, by SOA queries from `fqdn` up.
async fn find_zone(resolvers: &Resolvers, fqdn: &str) -> Result<String, DnsError> {
    let fail = |what: String| lookup_error(format!("finding the zone of {fqdn}: {what}"));
    let mut candidate = fqdn;
    for _ in 0..MAX_ZONE_STEPS {
        let answer = resolvers.ask(candidate, TYPE_SOA).await.map_err(fail)?;
        match zone_of(&answer, candidate) {
            ZoneAnswer::Zone { apex, .. } if apex.is_empty() => {
                return Err(fail(format!(
                    "only the root zone's SOA answers for it (the name is in no zone; {})",
                    resolvers.asked()
                )))
            }
            ZoneAnswer::Zone { apex, primary } => {
                debug!(fqdn, zone = %apex, primary = %primary, "dns-01 zone found");
                return Ok(apex);
            }
            ZoneAnswer::Up => match wire::parent(candidate) {
                Some(parent) if !parent.is_empty() => candidate = parent,
                _ => {
                    return Err(fail(format!(
                        "no SOA answered for it or any name above it ({})",
                        resolvers.asked()
                    )))
                }
            },
        }
    }
    Err(fail(format!(
        "no SOA within {MAX_ZONE_STEPS} labels of it ({})",
        resolvers.asked()
    )))
}

/// The servers the visibility check asks: the configured resolver, else the zone's name
/// servers; and the RFC 2136 server too. At most [`MAX_SERVERS`], each once.
async fn servers(
    dns: &Dns,
    resolvers: &Resolvers,
    zone: &str,
) -> Result<Vec<SocketAddr>, DnsError> {
    let mut servers = match dns.resolver {
        Some(resolver) => vec![resolver],
        None => name_servers(resolvers, zone).await?,
    };
    if let Provider::Rfc2136 { server, .. } = &dns.provider {
        servers.push(*server);
    }
    let mut seen = BTreeSet::new();
    servers.retain(|s| seen.insert(*s));
    servers.truncate(MAX_SERVERS);
    Ok(servers)
}

/// The addresses of `zone`'s NS names, port 53: the glue in the answer, else A (or AAAA where
/// a name has no A: a host without IPv6 routes cannot ask an IPv6 address, so IPv4 comes
/// first).
async fn name_servers(resolvers: &Resolvers, zone: &str) -> Result<Vec<SocketAddr>, DnsError> {
    let fail =
        |what: String| lookup_error(format!("finding the name servers of zone {zone}: {what}"));
    let answer = resolvers.ask(zone, TYPE_NS).await.map_err(fail)?;
    let mut names: Vec<String> = Vec::new();
    for record in &answer.answers {
        if let RData::Ns(ns) = &record.data {
            if record.name == zone && !names.contains(ns) && names.len() < MAX_NS {
                names.push(ns.clone());
            }
        }
    }
    if names.is_empty() {
        return Err(fail(format!("no NS records ({})", resolvers.asked())));
    }
    let mut addresses = Vec::new();
    let mut failures = Vec::new();
    for ns in &names {
        let mut found = glue(&answer, ns);
        if found.is_empty() {
            for qtype in [TYPE_A, TYPE_AAAA] {
                match resolvers.ask(ns, qtype).await {
                    Ok(m) => found = addresses_of(&m, ns),
                    Err(e) => failures.push(e),
                }
                if !found.is_empty() {
                    break;
                }
            }
        }
        addresses.extend(found.into_iter().map(|ip| SocketAddr::new(ip, DNS_PORT)));
    }
    if addresses.is_empty() {
        let why = if failures.is_empty() {
            String::new()
        } else {
            format!(" ({})", failures.join("; "))
        };
        return Err(fail(format!(
            "no address for any of them ({}){why}",
            names.join(", ")
        )));
    }
    Ok(addresses)
}

/// The A records for `ns` in the additional section, else its AAAA records.
fn glue(answer: &Message, ns: &str) -> Vec<IpAddr> {
    let of = |want: u16| {
        answer
            .additional
            .iter()
            .filter(|r| r.name == ns && r.rtype == want)
            .filter_map(|r| match r.data {
                RData::A(ip) => Some(IpAddr::V4(ip)),
                RData::Aaaa(ip) => Some(IpAddr::V6(ip)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let v4 = of(TYPE_A);
    if v4.is_empty() {
        of(TYPE_AAAA)
    } else {
        v4
    }
}

/// The addresses in an A or AAAA answer for `ns` (after any CNAME the resolver followed).
fn addresses_of(answer: &Message, ns: &str) -> Vec<IpAddr> {
    let mut owner = ns.to_string();
    for _ in 0..MAX_CNAME_HOPS {
        match cname_of(answer, &owner) {
            Some(target) => owner = target,
            None => break,
        }
    }
    answer
        .answers
        .iter()
        .filter(|r| r.name == owner)
        .filter_map(|r| match r.data {
            RData::A(ip) => Some(IpAddr::V4(ip)),
            RData::Aaaa(ip) => Some(IpAddr::V6(ip)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::dns::wire::{Builder, Header, Section, CLASS_IN, RCODE_NXDOMAIN};

    fn soa_data(mname: &str) -> Vec<u8> {
        let mut data = Vec::new();
        wire::put_name(&mut data, mname).expect("encodes");
        wire::put_name(&mut data, "hostmaster.example.test").expect("encodes");
        data.extend_from_slice(&[0; 20]);
        data
    }

    fn name_data(name: &str) -> Vec<u8> {
        let mut data = Vec::new();
        wire::put_name(&mut data, name).expect("encodes");
        data
    }

    fn answer(rcode: u8, records: &[(Section, &str, u16, Vec<u8>)]) -> Message {
        let mut m = Builder::new(Header {
            qr: true,
            rcode,
            ..Header::default()
        });
        for (section, name, rtype, data) in records {
            m.record(*section, name, (*rtype, CLASS_IN, 5), data)
                .expect("encodes");
        }
        Message::parse(&m.finish()).expect("decodes")
    }

    #[test]
    fn the_apex_has_its_soa_in_the_answer() {
        let m = answer(
            RCODE_NOERROR,
            &[(
                Section::Answer,
                "example.test",
                TYPE_SOA,
                soa_data("ns.example.test"),
            )],
        );
        assert_eq!(
            zone_of(&m, "example.test"),
            ZoneAnswer::Zone {
                apex: "example.test".into(),
                primary: "ns.example.test".into()
            }
        );
    }

    #[test]
    fn a_name_below_the_apex_has_the_soa_in_the_authority_section() {
        for rcode in [RCODE_NOERROR, RCODE_NXDOMAIN] {
            let m = answer(
                rcode,
                &[(
                    Section::Authority,
                    "example.test",
                    TYPE_SOA,
                    soa_data("ns.example.test"),
                )],
            );
            assert_eq!(
                zone_of(&m, "_acme-challenge.a.b.example.test"),
                ZoneAnswer::Zone {
                    apex: "example.test".into(),
                    primary: "ns.example.test".into()
                }
            );
        }
    }

    #[test]
    fn anything_else_moves_up() {
        // An SOA of another name in the answer (a CNAME's target's zone), an SOA in the
        // authority section of a zone the name is not in, a referral, nothing.
        let cname_then_soa = answer(
            RCODE_NOERROR,
            &[
                (
                    Section::Answer,
                    "www.example.test",
                    TYPE_CNAME,
                    name_data("x.other.test"),
                ),
                (
                    Section::Authority,
                    "other.test",
                    TYPE_SOA,
                    soa_data("ns.other.test"),
                ),
            ],
        );
        assert_eq!(zone_of(&cname_then_soa, "www.example.test"), ZoneAnswer::Up);
        let referral = answer(
            RCODE_NOERROR,
            &[(
                Section::Authority,
                "example.test",
                TYPE_NS,
                name_data("ns.example.test"),
            )],
        );
        assert_eq!(zone_of(&referral, "a.example.test"), ZoneAnswer::Up);
        assert_eq!(
            zone_of(&answer(RCODE_NOERROR, &[]), "a.test"),
            ZoneAnswer::Up
        );
    }

    #[test]
    fn cnames_are_read_for_their_owner_only() {
        let m = answer(
            RCODE_NOERROR,
            &[(
                Section::Answer,
                "_acme-challenge.a.example.test",
                TYPE_CNAME,
                name_data("A.Validation.TEST"),
            )],
        );
        assert_eq!(
            cname_of(&m, "_acme-challenge.a.example.test").as_deref(),
            Some("a.validation.test")
        );
        assert_eq!(cname_of(&m, "_acme-challenge.b.example.test"), None);
    }

    #[test]
    fn name_server_addresses_prefer_glue_and_ipv4() {
        let m = answer(
            RCODE_NOERROR,
            &[
                (
                    Section::Answer,
                    "example.test",
                    TYPE_NS,
                    name_data("ns1.example.test"),
                ),
                (
                    Section::Additional,
                    "ns1.example.test",
                    TYPE_AAAA,
                    vec![0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                ),
                (
                    Section::Additional,
                    "ns1.example.test",
                    TYPE_A,
                    vec![192, 0, 2, 1],
                ),
            ],
        );
        assert_eq!(
            glue(&m, "ns1.example.test"),
            ["192.0.2.1".parse::<IpAddr>().expect("ip")]
        );
        assert!(glue(&m, "ns2.example.test").is_empty());
        let a = answer(
            RCODE_NOERROR,
            &[
                (
                    Section::Answer,
                    "ns.example.test",
                    TYPE_CNAME,
                    name_data("host.example.test"),
                ),
                (
                    Section::Answer,
                    "host.example.test",
                    TYPE_A,
                    vec![192, 0, 2, 7],
                ),
            ],
        );
        assert_eq!(
            addresses_of(&a, "ns.example.test"),
            ["192.0.2.7".parse::<IpAddr>().expect("ip")]
        );
    }
}
