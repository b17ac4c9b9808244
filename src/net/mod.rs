//! The network edge of the agent: which addresses a payload may reach ([`address`]), how names
//! resolve on Android ([`dns`]), which CAs are trusted ([`tls`]), and the one HTTP client built
//! from them ([`client`]).

pub mod address;
pub mod client;
pub mod dns;
pub mod tls;
