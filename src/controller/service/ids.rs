//! Random identifiers: TaskIds and AccessKey pairs, from /dev/urandom.

use std::io::Read;

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `len` characters of `alphabet`, uniformly (bytes that would bias the choice are redrawn).
fn random_from(alphabet: &[u8], len: usize) -> String {
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(len);
    let mut file = std::fs::File::open("/dev/urandom").expect("opening /dev/urandom");
    let mut buf = [0u8; 64];
    while out.len() < len {
        file.read_exact(&mut buf).expect("reading /dev/urandom");
        for b in buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

/// `t-` and 20 lowercase letters or digits, like Alibaba's TaskIds (103 bits).
pub fn new_task_id() -> String {
    format!("t-{}", random_from(LOWER_ALNUM, 20))
}

/// An AccessKey pair shaped like Alibaba's: `LTAI` + 20 letters and digits, and a
/// 30-character secret (178 bits).
pub fn new_access_key() -> (String, String) {
    (
        format!("LTAI{}", random_from(ALNUM, 20)),
        random_from(ALNUM, 30),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_shape_and_differ() {
        let id = new_task_id();
        assert_eq!(id.len(), 22);
        assert!(crate::task::payload::check_task_id(&id).is_ok());
        assert_ne!(id, new_task_id());
        let (key, secret) = new_access_key();
        assert!(key.starts_with("LTAI") && key.len() == 24, "{key}");
        assert_eq!(secret.len(), 30);
        assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
