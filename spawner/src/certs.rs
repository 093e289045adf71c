//! Where each sidecar's certificate comes from, and how it gets there. [`source`] decides which
//! certificate a target gets (the store's pair, or self-signed and why), reads its expiry, and
//! says so once per cause, for the daemon, its gauges and `spawner status` alike. [`delivery`]
//! copies a target's own files into a volume of its sidecar alone through the engine, so no
//! sidecar sees another site's key and the store needs no permission change. ACME obtains
//! certificates into the same store ([`crate::acme`]).

pub(crate) mod delivery;
pub(crate) mod source;
