//! An external mosquitto as the fleet's broker (`ferry-controller serve --broker URL`):
//! mosquitto's own password file and ACL file, written from the store so the broker checks
//! agents exactly as the embedded one does ([`super::broker`]).
//!
//! The files need, in `mosquitto.conf`:
//!
//! ```text
//! allow_anonymous false
//! password_file /etc/mosquitto/ferry.passwd
//! acl_file /etc/mosquitto/ferry.acl
//! # An agent's session is its client id: bind it to the user, so no agent takes over another's.
//! use_username_as_clientid true
//! ```
//!
//! and a `kill -HUP` of mosquitto after they change (it rereads both).

use super::ports::Credentials;
use super::secrets;
use crate::error::{Code, Error, Result};
use crate::fleet::topics::{self, Kind};
use std::fmt::Write;

/// `(password_file, acl_file)` texts: one `user:$7$…` line per instance from
/// [`Credentials::agent_password_hashes`] plus the controller's user (its password hashed
/// here with a fresh salt), and the ACL confining each agent `%u` to its own topics while the
/// controller reads and writes every instance's.
pub async fn mosquitto_files(
    credentials: &dyn Credentials,
    controller_user: &str,
    controller_password: &str,
) -> Result<(String, String)> {
    let mut agents = credentials.agent_password_hashes().await?;
    agents.sort();
    let mut passwd = String::new();
    for (instance, hash) in &agents {
        topics::check_instance_id(instance)?;
        if instance == controller_user {
            return Err(Error::new(
                Code::InvalidInstanceId,
                format!("instance {instance:?} has the controller's MQTT user name"),
            ));
        }
        if hash.contains(['\n', ':']) || !hash.starts_with("$7$") {
            return Err(Error::new(
                Code::InvalidConfig,
                format!("the stored password hash of {instance} is not a $7$ hash"),
            ));
        }
        let _ = writeln!(passwd, "{instance}:{hash}");
    }
    if controller_user.is_empty() || controller_user.contains([':', '\n', ' ', '#', '+', '/']) {
        return Err(Error::new(
            Code::InvalidConfig,
            format!("controller MQTT user {controller_user:?} cannot be a mosquitto user name"),
        ));
    }
    let _ = writeln!(
        passwd,
        "{controller_user}:{}",
        secrets::hash(controller_password)
    );
    Ok((passwd, acl_text(controller_user)))
}

fn acl_text(controller_user: &str) -> String {
    let prefix = topics::PREFIX;
    let mut acl = String::from(
        "# ferry fleet, protocol v1: written by ferry-controller; edits are overwritten.\n\
         # Every agent logs in as its InstanceId (%u): it reads only its orders and writes\n\
         # only its own report, hello and presence (its last will goes there too).\n",
    );
    let _ = writeln!(acl, "pattern read {}", topics::topic("%u", Kind::Order));
    for kind in [Kind::Report, Kind::Hello, Kind::Presence] {
        let _ = writeln!(acl, "pattern write {}", topics::topic("%u", kind));
    }
    let _ = writeln!(
        acl,
        "\n# The controller: every instance's topics.\nuser {controller_user}\ntopic readwrite {prefix}/#"
    );
    acl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acl_confines_agents_by_user_name_and_opens_every_instance_to_the_controller() {
        let acl = acl_text("ferry-controller");
        for line in [
            "pattern read ferry/v1/i/%u/order",
            "pattern write ferry/v1/i/%u/report",
            "pattern write ferry/v1/i/%u/hello",
            "pattern write ferry/v1/i/%u/presence",
            "user ferry-controller",
            "topic readwrite ferry/v1/i/#",
        ] {
            assert!(acl.lines().any(|l| l == line), "{line} in\n{acl}");
        }
        // The agents' patterns first, then the controller's own block.
        let last_pattern = acl.rfind("pattern").unwrap();
        assert!(last_pattern < acl.find("\nuser ").unwrap());
    }
}
