//! Where a handshake carries a client token.

use super::params::{cookie_value, query_value};

/// The cookie a browser page (the dashboard) can set for the upgrade.
const TOKEN_COOKIE: &str = "relay_token";

/// The token a handshake presents: `Authorization: Bearer`, then `?token=`, then the
/// `relay_token` cookie.
pub fn presented_token(
    authorization: Option<&str>,
    query: Option<&str>,
    cookie: Option<&str>,
) -> Option<String> {
    if let Some(token) = authorization.and_then(|a| {
        let (scheme, token) = a.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    }) {
        return Some(token);
    }
    if let Some(token) = query_value(query, "token") {
        return Some(token.into_owned());
    }
    cookie_value(cookie, TOKEN_COOKIE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_all_three_handshake_places() {
        assert_eq!(
            presented_token(Some("Bearer abc"), None, None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(None, Some("relay_events=1&token=a%2Bb"), None).as_deref(),
            Some("a+b")
        );
        assert_eq!(
            presented_token(None, None, Some("theme=dark; relay_token=xyz")).as_deref(),
            Some("xyz")
        );
        assert_eq!(presented_token(Some("Basic abc"), None, None), None);
    }

    #[test]
    fn the_header_wins_over_the_query_over_the_cookie() {
        let all = presented_token(Some("bearer h"), Some("token=q"), Some("relay_token=c"));
        assert_eq!(all.as_deref(), Some("h"));
        let two = presented_token(Some("Basic x"), Some("token=q"), Some("relay_token=c"));
        assert_eq!(two.as_deref(), Some("q"));
        let one = presented_token(None, Some("relay_events=1"), Some("relay_token=c"));
        assert_eq!(one.as_deref(), Some("c"));
    }
}
