//! NVMe/TCP: the connection ([`conn`]), the blocking connect sequences run on helper threads
//! ([`setup`]), the admin queue of a live controller ([`admin`]) and the I/O qpair ([`qpair`]).

pub(crate) mod admin;
pub(crate) mod conn;
pub(crate) mod qpair;
pub(crate) mod setup;
