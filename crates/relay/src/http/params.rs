//! The query string and the `Cookie` header, parsed one way for the whole relay:
//! `form_urlencoded` for queries, the `cookie` crate for cookies.
//!
//! When a key repeats, the first occurrence wins, in both. Bad input (invalid `%` escapes,
//! bytes that do not decode to UTF-8, pairs without a name, junk between cookies) never fails
//! the request: escapes that do not decode are kept as written, invalid UTF-8 becomes U+FFFD,
//! and pairs that do not parse are skipped.

use std::borrow::Cow;

use cookie::Cookie;

/// The value of query parameter `name`, percent-decoded (`+` is a space). A parameter without
/// `=` has the empty value.
pub(crate) fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// The value of cookie `name` in a `Cookie` header, as sent: not percent-decoded, surrounding
/// quotes kept (a cookie's value is whatever the page stored).
pub(crate) fn cookie_value(header: Option<&str>, name: &str) -> Option<String> {
    Cookie::split_parse(header?)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(query: &str, name: &str) -> Option<String> {
        query_value(Some(query), name).map(Cow::into_owned)
    }

    fn c(header: &str, name: &str) -> Option<String> {
        cookie_value(Some(header), name)
    }

    #[test]
    fn query_values_are_percent_decoded_with_plus_as_space() {
        assert_eq!(q("token=a%2Bb", "token").as_deref(), Some("a+b"));
        assert_eq!(q("token=a+b", "token").as_deref(), Some("a b"));
        assert_eq!(q("token=%E2%82%AC", "token").as_deref(), Some("€"));
        assert_eq!(q("to%6Ben=x", "token").as_deref(), Some("x"));
        assert_eq!(
            q("relay_events=1&token=t", "relay_events").as_deref(),
            Some("1")
        );
        // Borrowed when there is nothing to decode.
        assert!(matches!(
            query_value(Some("a=plain"), "a"),
            Some(Cow::Borrowed("plain"))
        ));
    }

    #[test]
    fn query_keys_match_whole_and_the_first_repeat_wins() {
        assert_eq!(q("token=a&token=b", "token").as_deref(), Some("a"));
        assert_eq!(q("xtoken=a&token_=b", "token"), None);
        assert_eq!(q("relay_events", "relay_events").as_deref(), Some(""));
        assert_eq!(q("token=", "token").as_deref(), Some(""));
        assert_eq!(query_value(None, "token"), None);
        assert_eq!(q("", "token"), None);
    }

    #[test]
    fn bad_query_input_is_kept_or_skipped_never_fatal() {
        assert_eq!(q("token=a%zz%", "token").as_deref(), Some("a%zz%"));
        assert_eq!(q("token=%4", "token").as_deref(), Some("%4"));
        assert_eq!(
            q("token=%FF%C3", "token").as_deref(),
            Some("\u{FFFD}\u{FFFD}")
        );
        // Empty keys and empty pairs are not a name anyone asks for.
        assert_eq!(q("=x&&=&token=t", "token").as_deref(), Some("t"));
        assert_eq!(q("=x", "token"), None);
    }

    #[test]
    fn cookies_are_found_by_name_and_the_first_repeat_wins() {
        assert_eq!(
            c("theme=dark; relay_token=xyz", "relay_token").as_deref(),
            Some("xyz")
        );
        assert_eq!(
            c("relay_token=a; relay_token=b", "relay_token").as_deref(),
            Some("a")
        );
        assert_eq!(
            c("  relay_token = xyz  ", "relay_token").as_deref(),
            Some("xyz")
        );
        assert_eq!(
            c("relay_token=a%2Bb", "relay_token").as_deref(),
            Some("a%2Bb")
        );
        assert_eq!(
            c("relay_token=\"q\"", "relay_token").as_deref(),
            Some("\"q\"")
        );
        assert_eq!(c("relay_token==x", "relay_token").as_deref(), Some("=x"));
        assert_eq!(c("xrelay_token=a; relay_tokens=b", "relay_token"), None);
        assert_eq!(cookie_value(None, "relay_token"), None);
    }

    #[test]
    fn junk_in_a_cookie_header_is_skipped() {
        assert_eq!(
            c(
                ";;junk; =nameless; ;relay_token=ok; more junk",
                "relay_token"
            )
            .as_deref(),
            Some("ok")
        );
        assert_eq!(c("relay_token", "relay_token"), None);
        assert_eq!(c(";;;", "relay_token"), None);
        assert_eq!(c("", "relay_token"), None);
        assert_eq!(c("=", ""), None);
    }

    /// Every short string over the characters that matter to either syntax parses without
    /// panicking.
    #[test]
    fn no_short_input_panics() {
        let alphabet = ['%', '=', '&', ';', '+', ' ', '"', 'a', 'é', 'F'];
        let mut input = String::new();
        for n in 0..alphabet.len().pow(4) {
            input.clear();
            let mut k = n;
            for _ in 0..4 {
                input.push(alphabet[k % alphabet.len()]);
                k /= alphabet.len();
            }
            let _ = query_value(Some(&input), "a");
            let _ = cookie_value(Some(&input), "a");
        }
    }
}
