//! The network edge of the agent: which addresses a payload may reach ([`address`]), how names
//! resolve on Android ([`dns`]), which CAs are trusted ([`tls`]), the one HTTP client built
//! from them ([`client`]), and the connections of ferry's HTTP servers ([`connections`]).

pub mod address;
pub mod client;
pub mod connections;
pub mod dns;
pub mod tls;
