//! What only a phone has: the log socket ([`logcat`]), the media store's scan broadcast
//! ([`media_scan`]) and the drop to the configured uid and groups ([`privileges`]).

pub mod logcat;
pub mod media_scan;
pub mod privileges;
