//! Route keys: how the state file names a route (docs/state-file.md#contents).

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKey {
    /// The main account of one identity (as persisted: an account id or `token:<fingerprint>`).
    Main(String),
    /// One fallback account, by its id.
    Fallback(String),
}

impl RouteKey {
    /// Reads a state-file key; `None` for a key of another kind.
    pub fn parse(text: &str) -> Option<Self> {
        match text.split_once(':')? {
            ("main", identity) => Some(Self::Main(identity.to_owned())),
            ("fallback", id) => Some(Self::Fallback(id.to_owned())),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Main(_) => "main",
            Self::Fallback(_) => "fallback",
        }
    }

    /// The identity (main) or account id (fallback) the key names.
    pub fn id(&self) -> &str {
        match self {
            Self::Main(id) | Self::Fallback(id) => id,
        }
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_text() {
        for key in [
            RouteKey::Main("alice".into()),
            RouteKey::Main("token:0123456789abcdef".into()),
            RouteKey::Fallback("fb:1".into()),
            RouteKey::Main(String::new()),
        ] {
            assert_eq!(RouteKey::parse(&key.to_string()), Some(key));
        }
    }

    #[test]
    fn only_the_two_prefixes_name_a_route() {
        assert_eq!(
            RouteKey::parse("fallback:x").map(|k| (k.kind(), k.id().to_owned())),
            Some(("fallback", "x".to_owned()))
        );
        assert_eq!(RouteKey::parse("other:x"), None);
        assert_eq!(RouteKey::parse("Main:x"), None);
        assert_eq!(RouteKey::parse(""), None);
    }
}
