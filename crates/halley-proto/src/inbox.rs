//! Unguessable client addresses (the seed's UniversalComet): a client holds a random secret; its
//! inbox is the channel `/inbox/H` where H is derived from the secret by SHA-256. Handing out the
//! address lets anyone send to it, while subscribing needs the secret, which the address does not
//! reveal.

use sha2::{Digest, Sha256};

use crate::Channel;

/// Where inbox channels live. Wildcards never match below it (see [`Channel::is_private`]).
pub const PREFIX: &str = "/inbox/";

/// Length of a secret and of an address, in lowercase hex digits (128 bits each).
pub const HEX_LEN: usize = 32;

/// The secret's text form from 128 random bits.
pub fn secret_from(bits: u128) -> String {
    format!("{bits:032x}")
}

/// The inbox channel that belongs to `secret`, or `None` if it is not a well-formed secret.
pub fn channel_for(secret: &str) -> Option<Channel> {
    if secret.len() != HEX_LEN
        || !secret
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut hash = Sha256::new();
    hash.update(b"halley-inbox\0");
    hash.update(secret.as_bytes());
    let digest = hash.finalize();
    let mut name = String::with_capacity(PREFIX.len() + HEX_LEN);
    name.push_str(PREFIX);
    for b in &digest[..HEX_LEN / 2] {
        name.push_str(&format!("{b:02x}"));
    }
    // Hex digits are valid channel characters.
    Some(Channel::parse(&name).expect("hex inbox channel"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pattern;

    #[test]
    fn derived_not_revealed() {
        let secret = secret_from(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let channel = channel_for(&secret).unwrap();
        assert!(channel.is_private());
        assert_eq!(channel.as_str().len(), PREFIX.len() + HEX_LEN);
        assert!(!channel.as_str().contains(&secret));
        assert_eq!(channel_for(&secret), Some(channel.clone()));
        assert_ne!(channel_for(&secret_from(1)), Some(channel));
    }

    /// The derivation clients/js/PROTOCOL.md documents, with its example: SHA-256 over
    /// `"halley-inbox\0"` and the secret's text, the first 16 bytes in hex.
    #[test]
    fn the_documented_example() {
        let channel = channel_for("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(channel.as_str(), "/inbox/a0280a8cf5049c9b2a8711c6ffae1423");
    }

    #[test]
    fn malformed_secrets() {
        for bad in ["", "abc", &"g".repeat(32), &"A".repeat(32), &"a".repeat(33)] {
            assert_eq!(channel_for(bad), None, "{bad}");
        }
    }

    #[test]
    fn wildcards_never_see_inboxes() {
        let channel = channel_for(&secret_from(7)).unwrap();
        for p in ["/**", "/inbox/*", "/inbox/**"] {
            assert!(!Pattern::parse(p).unwrap().matches(&channel), "{p}");
        }
        assert!(Pattern::parse(channel.as_str()).unwrap().matches(&channel));
    }
}
