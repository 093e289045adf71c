//! Small enumerated settings both binaries read: the proxy mode and the client-certificate mode.

use std::fmt;
use std::str::FromStr;

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
}
