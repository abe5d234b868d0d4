//! Token fingerprints: how the manager names a token without ever storing it.

use sha2::{Digest, Sha256};

/// The first 16 hex characters of the SHA-256 of `token`.
pub fn fingerprint(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_the_sha256_prefix() {
        // sha256("abc") = ba7816bf8f01cfea...
        assert_eq!(fingerprint("abc"), "ba7816bf8f01cfea");
        assert_eq!(fingerprint("").len(), 16);
    }
}
