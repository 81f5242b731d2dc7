//! What a key may do. Every route names the one scope it needs.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `POST /v1/chat/completions`.
    ChatWrite,
    /// `GET /v1/models`.
    ModelsRead,
    /// Reading explanation traces (their issue brings the routes).
    TracesRead,
    /// Requesting explanation traces.
    TracesWrite,
    /// `/v1/admin/*`: the key's own tenant, or every tenant for a key of [`GLOBAL_TENANT`].
    Admin,
}

/// The tenant whose admin keys administer every tenant.
pub const GLOBAL_TENANT: &str = "*";

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::ChatWrite,
        Scope::ModelsRead,
        Scope::TracesRead,
        Scope::TracesWrite,
        Scope::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::ChatWrite => "chat:write",
            Scope::ModelsRead => "models:read",
            Scope::TracesRead => "traces:read",
            Scope::TracesWrite => "traces:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.name() == text.trim())
            .ok_or_else(|| {
                format!(
                    "unknown scope `{text}`; scopes are {}",
                    Scope::ALL.map(Scope::name).join(", ")
                )
            })
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes, as the key carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(u8);

impl ScopeSet {
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// `chat:write,models:read` (the form the CLI takes and the store keeps).
    pub fn parse_list(text: &str) -> Result<ScopeSet, String> {
        let mut set = ScopeSet::default();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            set = set.with(Scope::parse(part)?);
        }
        if set == ScopeSet::default() {
            return Err("a key needs at least one scope".into());
        }
        Ok(set)
    }

    pub fn with(self, scope: Scope) -> ScopeSet {
        ScopeSet(self.0 | scope.bit())
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        iter.into_iter().fold(ScopeSet::default(), ScopeSet::with)
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::name).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_unknown_scopes_are_named() {
        let s = ScopeSet::parse_list("models:read, chat:write").unwrap();
        assert!(s.contains(Scope::ChatWrite) && s.contains(Scope::ModelsRead));
        assert!(!s.contains(Scope::Admin));
        assert_eq!(s.to_string(), "chat:write,models:read");
        assert_eq!(ScopeSet::parse_list(&s.to_string()), Ok(s));
        let e = ScopeSet::parse_list("chat:write,chat:read").unwrap_err();
        assert!(
            e.contains("`chat:read`") && e.contains("traces:write"),
            "{e}"
        );
        assert!(ScopeSet::parse_list("").is_err());
    }
}
