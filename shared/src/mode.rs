//! Small enumerated settings both binaries read: the proxy mode and the client-certificate mode,
//! and the one rule of which settings go with which mode ([`check_mode`]), which the sidecar's
//! flags and the spawner's labels both apply, so the two can never disagree.

use std::fmt;
use std::str::FromStr;

use crate::proto::{AlpnList, BackendProtocol, ProxyProtocol};

/// How a sidecar proxies (`--mode`, the `mode` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Terminate TLS and proxy HTTP requests (HTTP/1.1 and HTTP/2 in front).
    #[default]
    Http,
    /// Terminate TLS and relay raw bytes.
    Tcp,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "http" => Ok(Mode::Http),
            "tcp" => Ok(Mode::Tcp),
            other => Err(format!("expected http or tcp, got {other:?}")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A setting that means something in one mode only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeSetting {
    /// `--hsts`: a response header.
    Hsts,
    /// `--http3`: HTTP over QUIC beside the TLS listener.
    Http3,
    /// `--backend-protocol`: the HTTP version spoken to the backend.
    BackendProtocol,
    /// `--alpn`: the protocols offered in the handshake.
    Alpn,
    /// `--proxy-protocol`: a header before the relayed bytes.
    ProxyProtocol,
}

/// The mode-specific settings of one sidecar, as asked for.
#[derive(Debug, Clone, Copy)]
pub struct ModeSettings<'a> {
    pub hsts: bool,
    pub http3: bool,
    pub backend_protocol: BackendProtocol,
    pub alpn: &'a AlpnList,
    pub proxy_protocol: ProxyProtocol,
}

/// A setting asked for in the mode that cannot honour it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeConflict {
    pub setting: ModeSetting,
    /// The mode the setting needs.
    pub needs: Mode,
    /// Why the other mode cannot honour it, for the error message.
    pub why: &'static str,
}

/// Which settings go with which mode. A setting at the value the other mode behaves as anyway
/// (`backend-protocol` `auto`, no ALPN list, PROXY protocol `off`) passes in either mode, so a
/// default never conflicts. The first conflict, in the order of [`ModeSetting`].
pub fn check_mode(mode: Mode, s: &ModeSettings<'_>) -> Result<(), ModeConflict> {
    let conflict = |setting, needs, why| {
        Err(ModeConflict {
            setting,
            needs,
            why,
        })
    };
    match mode {
        Mode::Tcp if s.hsts => conflict(
            ModeSetting::Hsts,
            Mode::Http,
            "tcp mode sees no HTTP responses",
        ),
        Mode::Tcp if s.http3 => conflict(
            ModeSetting::Http3,
            Mode::Http,
            "tcp mode relays a TCP byte stream and serves no HTTP over QUIC",
        ),
        Mode::Tcp if s.backend_protocol != BackendProtocol::Auto => conflict(
            ModeSetting::BackendProtocol,
            Mode::Http,
            "tcp mode relays bytes and speaks no HTTP",
        ),
        Mode::Http if !s.alpn.is_empty() => conflict(
            ModeSetting::Alpn,
            Mode::Tcp,
            "http mode chooses its own ALPN (h2, http/1.1)",
        ),
        Mode::Http if s.proxy_protocol != ProxyProtocol::Off => conflict(
            ModeSetting::ProxyProtocol,
            Mode::Tcp,
            "http mode tells the backend the client's address in X-Forwarded-For",
        ),
        _ => Ok(()),
    }
}

/// Whether client certificates are required or only requested (`--client-auth`, the
/// `client-auth` label). Required unless said otherwise: asking for mutual TLS and then admitting
/// clients without a certificate must be a visible choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClientAuthMode {
    #[default]
    Required,
    Optional,
}

impl ClientAuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMode::Required => "required",
            ClientAuthMode::Optional => "optional",
        }
    }
}

impl FromStr for ClientAuthMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "required" => Ok(ClientAuthMode::Required),
            "optional" => Ok(ClientAuthMode::Optional),
            other => Err(format!("expected required or optional, got {other:?}")),
        }
    }
}

impl fmt::Display for ClientAuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_render() {
        for m in [Mode::Http, Mode::Tcp] {
            assert_eq!(m.to_string().parse::<Mode>(), Ok(m));
        }
        assert_eq!(" tcp ".parse::<Mode>(), Ok(Mode::Tcp));
        assert!("udp".parse::<Mode>().is_err() && "HTTP".parse::<Mode>().is_err());
        for m in [ClientAuthMode::Required, ClientAuthMode::Optional] {
            assert_eq!(m.to_string().parse::<ClientAuthMode>(), Ok(m));
        }
        assert!("maybe".parse::<ClientAuthMode>().is_err());
    }

    #[test]
    fn each_mode_refuses_the_other_modes_settings_but_not_their_defaults() {
        let none = AlpnList::default();
        let h2: AlpnList = "h2".parse().expect("alpn");
        let defaults = ModeSettings {
            hsts: false,
            http3: false,
            backend_protocol: BackendProtocol::Auto,
            alpn: &none,
            proxy_protocol: ProxyProtocol::Off,
        };
        assert_eq!(check_mode(Mode::Http, &defaults), Ok(()));
        assert_eq!(check_mode(Mode::Tcp, &defaults), Ok(()));
        let cases = [
            (
                ModeSettings {
                    hsts: true,
                    ..defaults
                },
                ModeSetting::Hsts,
                Mode::Http,
            ),
            (
                ModeSettings {
                    http3: true,
                    ..defaults
                },
                ModeSetting::Http3,
                Mode::Http,
            ),
            (
                ModeSettings {
                    backend_protocol: BackendProtocol::H2c,
                    ..defaults
                },
                ModeSetting::BackendProtocol,
                Mode::Http,
            ),
            (
                ModeSettings {
                    alpn: &h2,
                    ..defaults
                },
                ModeSetting::Alpn,
                Mode::Tcp,
            ),
            (
                ModeSettings {
                    proxy_protocol: ProxyProtocol::V2,
                    ..defaults
                },
                ModeSetting::ProxyProtocol,
                Mode::Tcp,
            ),
        ];
        for (settings, setting, needs) in cases {
            assert_eq!(
                check_mode(needs, &settings),
                Ok(()),
                "{setting:?} in {needs}"
            );
            let other = if needs == Mode::Http {
                Mode::Tcp
            } else {
                Mode::Http
            };
            let e = check_mode(other, &settings).expect_err("refused in the other mode");
            assert_eq!((e.setting, e.needs), (setting, needs));
            assert!(e.why.starts_with(other.as_str()), "{}", e.why);
        }
    }
}
