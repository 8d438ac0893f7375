//! The browser `Origin` allow-list: exact origins or `*.` subdomain wildcards.

/// An allowed Origin: scheme, host (possibly `*.` + suffix) and optional port, compared exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OriginPattern {
    scheme: String,
    /// `Some(".example.com")` for `*.example.com`.
    wildcard_suffix: Option<String>,
    host: String,
    port: Option<String>,
}

impl OriginPattern {
    pub(super) fn parse(pattern: &str) -> Option<OriginPattern> {
        let (scheme, rest) = pattern.trim().split_once("://")?;
        if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
            return None;
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
                (h, Some(p.to_owned()))
            }
            Some(_) => return None,
            None => (rest, None),
        };
        let host = host.to_ascii_lowercase();
        let wildcard_suffix = match host.strip_prefix('*') {
            Some(suffix)
                if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') =>
            {
                Some(suffix.to_owned())
            }
            Some(_) => return None,
            None if host.contains('*') || host.is_empty() => return None,
            None => None,
        };
        Some(OriginPattern {
            scheme: scheme.to_ascii_lowercase(),
            wildcard_suffix,
            host,
            port,
        })
    }

    fn matches(&self, origin: &OriginPattern) -> bool {
        if self.scheme != origin.scheme || self.port != origin.port {
            return false;
        }
        match &self.wildcard_suffix {
            Some(suffix) => {
                origin.host.len() > suffix.len() && origin.host.ends_with(suffix.as_str())
            }
            None => self.host == origin.host,
        }
    }
}

/// Which `Origin` headers may upgrade.
pub(super) struct Origins {
    patterns: Vec<OriginPattern>,
    allow_missing: bool,
}

impl Origins {
    /// Patterns that do not parse are left out (validation has already refused them).
    pub(super) fn new(allowed: &[String], allow_missing: bool) -> Origins {
        Origins {
            patterns: allowed
                .iter()
                .filter_map(|o| OriginPattern::parse(o))
                .collect(),
            allow_missing,
        }
    }

    /// Whether a request with this `Origin` header (if any) may upgrade. A wildcard is a
    /// pattern, never an origin a browser sends.
    pub(super) fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => self.allow_missing,
            Some(o) => OriginPattern::parse(o)
                .filter(|o| o.wildcard_suffix.is_none())
                .is_some_and(|o| self.patterns.iter().any(|p| p.matches(&o))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec![
            "https://*.example.com".into(),
            "http://localhost:3000".into(),
        ]
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_wildcard() {
        let origins = Origins::new(&allowed(), true);
        assert!(origins.allows(None));
        assert!(origins.allows(Some("https://app.example.com")));
        assert!(origins.allows(Some("https://a.b.example.com")));
        assert!(origins.allows(Some("http://localhost:3000")));
        for bad in [
            "https://example.com",
            "http://app.example.com",
            "https://app.example.com.evil.io",
            "https://evilexample.com",
            "http://localhost:3001",
            "null",
            "https://*.example.com",
        ] {
            assert!(!origins.allows(Some(bad)), "{bad} must be refused");
        }
        let strict = Origins::new(&allowed(), false);
        assert!(!strict.allows(None));
    }
}
