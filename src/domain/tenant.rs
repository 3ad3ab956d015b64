use std::fmt;

use serde::{Deserialize, Serialize};

/// The owner of jobs, subscriptions and deliveries: the name of the API key that created them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tenant(String);

impl Tenant {
    /// Names are short and plain so they can sit inside storage keys.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok_len = (1..=64).contains(&raw.len());
        let ok_chars = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok_len && ok_chars {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "tenant name {raw:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name as the store wrote it, taken as it is (like its JSON form).
    pub(crate) fn from_stored(raw: String) -> Self {
        Self(raw)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
