//! Where a running sidecar offers its listening sockets to the sidecar that replaces it (`sidecar
//! --take-over`): an abstract Unix socket, named after the TLS listen address. Abstract names
//! belong to the network namespace, not to a file system, so every process of the namespace
//! (the app container and its sidecar, which share one) finds it without a shared volume, and it
//! disappears with the process that holds it. Here so that the spawner and the documentation can
//! name it as the sidecar does.

use std::net::SocketAddr;

/// What every hand-over socket's name starts with.
pub const NAME_PREFIX: &str = "tls-sidecar/handover/";

/// The abstract name (without its leading NUL byte) of the hand-over socket of the sidecar
/// listening for TLS on `listen`, e.g. `tls-sidecar/handover/0.0.0.0:8443`.
pub fn socket_name(listen: SocketAddr) -> String {
    format!("{NAME_PREFIX}{listen}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_listen_address_as_displayed() {
        let v4: SocketAddr = "0.0.0.0:8443".parse().expect("addr");
        assert_eq!(socket_name(v4), "tls-sidecar/handover/0.0.0.0:8443");
        let v6: SocketAddr = "[::1]:443".parse().expect("addr");
        assert_eq!(socket_name(v6), "tls-sidecar/handover/[::1]:443");
        // An abstract name has room for 107 bytes; the longest address fits with room to spare.
        let longest: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .expect("addr");
        assert!(socket_name(longest).len() < 107);
    }
}
