//! Newtypes parsed at the edge: sandbox ids, tenants and owners.

use std::fmt;

use rand::RngCore;

/// `sb_` followed by 20 lowercase hex characters (80 bits) from the OS CSPRNG.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SandboxId(String);

const ID_PREFIX: &str = "sb_";
/// 80 random bits: far beyond guessing, short enough to read in a log line.
const ID_RANDOM_BYTES: usize = 10;

impl SandboxId {
    pub fn generate() -> Self {
        let mut bytes = [0u8; ID_RANDOM_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        SandboxId(format!("{ID_PREFIX}{}", hex::encode(bytes)))
    }

    /// Accepts only ids this server could have made. Anything else cannot name
    /// a sandbox, so callers answer 404 for it, and it never reaches a path.
    pub fn parse(s: &str) -> Option<Self> {
        let hex_part = s.strip_prefix(ID_PREFIX)?;
        let well_formed = (16..=64).contains(&hex_part.len())
            && hex_part.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        well_formed.then(|| SandboxId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tenant an API key belongs to. With auth off every caller is `default`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn new(s: impl Into<String>) -> Self {
        TenantId(s.into())
    }
    pub fn default_tenant() -> Self {
        TenantId("default".into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A trimmed `X-User-ID`: at most 128 characters, no whitespace, control
/// characters, `/` or `\`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerId(String);

impl OwnerId {
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Ok(None);
        }
        if s.chars().count() > 128 {
            return Err("user id is longer than 128 characters".into());
        }
        if let Some(c) = s
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '/' || *c == '\\')
        {
            return Err(format!("user id contains the forbidden character {c:?}"));
        }
        Ok(Some(OwnerId(s.to_string())))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_ids_are_well_formed_and_distinct() {
        let ids: HashSet<String> = (0..10_000).map(|_| SandboxId::generate().0).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(50) {
            assert_eq!(id.len(), 3 + 2 * ID_RANDOM_BYTES);
            assert_eq!(SandboxId::parse(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn only_ids_the_server_could_make_parse() {
        for bad in [
            "",
            "sb_",
            "sb_123",
            "sb_../../etc/passwd",
            "SB_0123456789abcdef0123",
            "sb_0123456789ABCDEF0123",
            "xx_0123456789abcdef0123",
            "sb_0123456789abcdef012/",
        ] {
            assert_eq!(SandboxId::parse(bad), None, "{bad}");
        }
        assert!(SandboxId::parse("sb_a1b2c3d4e5f6a7b8").is_some());
    }

    #[test]
    fn user_ids_follow_the_header_rules() {
        assert_eq!(OwnerId::parse("  user_123 ").unwrap().unwrap().as_str(), "user_123");
        assert_eq!(OwnerId::parse("   ").unwrap(), None);
        assert!(OwnerId::parse(&"u".repeat(128)).unwrap().is_some());
        assert_eq!(
            OwnerId::parse(&"u".repeat(129)).unwrap_err(),
            "user id is longer than 128 characters"
        );
        assert_eq!(
            OwnerId::parse("a b").unwrap_err(),
            "user id contains the forbidden character ' '"
        );
        assert_eq!(
            OwnerId::parse("a/b").unwrap_err(),
            "user id contains the forbidden character '/'"
        );
        assert_eq!(
            OwnerId::parse("a\\b").unwrap_err(),
            "user id contains the forbidden character '\\\\'"
        );
        assert!(OwnerId::parse("a\u{7}b").is_err());
    }
}
