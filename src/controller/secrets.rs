//! Agent passwords as the controller keeps them: only a salted hash, in mosquitto's own
//! `$7$` format (PBKDF2-HMAC-SHA512, base64 salt and hash), so the same line serves the
//! embedded broker's check and an external mosquitto's `password_file`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::Sha512;

/// mosquitto_passwd's default iteration count.
const ITERATIONS: u32 = 101;
const SALT_BYTES: usize = 12;
const HASH_BYTES: usize = 64;

/// A new random secret for an agent: 32 lowercase hex characters (128 bits).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("reading /dev/urandom");
}

/// `$7$101$<salt>$<hash>` for `secret`, with a fresh salt.
pub fn hash(secret: &str) -> String {
    let mut salt = [0u8; SALT_BYTES];
    fill_random(&mut salt);
    hash_with(secret, &salt, ITERATIONS)
}

fn hash_with(secret: &str, salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; HASH_BYTES];
    pbkdf2::pbkdf2_hmac::<Sha512>(secret.as_bytes(), salt, iterations, &mut out);
    format!(
        "$7${iterations}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(out)
    )
}

/// bcrypt's work factor for [`bcrypt_hash`]: 2^4 rounds, bcrypt's minimum. nats-server checks
/// the hash on every CONNECT, so the cost is CPU a node spends per agent (re)connect; at cost
/// 10 (~60 ms a core) 5,000 simulated agents connecting to a 3-node cluster on 2 cores never
/// all got in (logins timed out and were retried faster than they were checked). A higher
/// cost buys nothing here: every password hashed is a 128-bit random secret ([`new_secret`]),
/// which no number of guesses finds, whatever the hash's cost.
pub const BCRYPT_COST: u32 = 4;

/// `$2a$04$…` for `secret` (fresh salt): the form nats-server accepts in its `users`.
pub fn bcrypt_hash(secret: &str) -> String {
    bcrypt::hash_with_result(secret, BCRYPT_COST)
        .expect("bcrypt takes a cost of 4 and any password under 72 bytes")
        .format_for_version(bcrypt::Version::TwoA)
}

/// Whether `secret` matches a stored `$7$` hash (in constant time over the hash bytes).
pub fn verify(secret: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(""), Some("7"), Some(iterations), Some(salt), Some(_), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iterations), Ok(salt)) = (iterations.parse::<u32>(), STANDARD.decode(salt)) else {
        return false;
    };
    if !(1..=1_000_000).contains(&iterations) {
        return false;
    }
    let computed = hash_with(secret, &salt, iterations);
    crate::daemon::auth::constant_time_eq(computed.as_bytes(), stored.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_their_secret_only() {
        let secret = new_secret();
        assert_eq!(secret.len(), 32);
        let stored = hash(&secret);
        assert!(stored.starts_with("$7$101$"), "{stored}");
        assert!(verify(&secret, &stored));
        assert!(!verify("wrong", &stored));
        assert_ne!(hash(&secret), stored, "a fresh salt each time");
        for bad in ["", "$6$1$a$b", "$7$x$a$b", "$7$0$AAAA$b", "plain"] {
            assert!(!verify(&secret, bad), "{bad}");
        }
    }
}
