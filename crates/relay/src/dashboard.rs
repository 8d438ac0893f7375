//! `GET /dashboard`: a live page for whoever runs the relay, served from files embedded in the
//! binary (no CDN, nothing fetched from elsewhere, works offline).
//!
//! The page (`crates/relay/dashboard/`) polls `/status` and `/metrics` on the origin that served
//! it and opens the relay's own WebSocket through `kalshi-relay-client` (`relay-client.js`, a
//! bundle of `clients/js` that `tests/browser` rebuilds and checks is current). It is served
//! where `/status` is: on `admin_listen` when set, else on the client port.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::app::Ports;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The page and everything it loads; nothing else is ever requested by it.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/dashboard",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../dashboard/index.html"),
    },
    Asset {
        path: "/dashboard/dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../dashboard/dashboard.css"),
    },
    Asset {
        path: "/dashboard/dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../dashboard/dashboard.js"),
    },
    Asset {
        path: "/dashboard/relay-client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../dashboard/relay-client.js"),
    },
];

/// The page may load only its own files and talk only to this relay (its WebSocket may be on
/// another port of the same host, hence `ws:`/`wss:`).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The asset at `path` (`/dashboard/` is the page too).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path == "/dashboard/" {
        "/dashboard"
    } else {
        path
    };
    ASSETS.iter().find(|a| a.path == path)
}

/// The response for a `/dashboard...` path: the file, or 404.
pub fn respond(path: &str) -> Response<Full<Bytes>> {
    let Some(asset) = asset(path) else {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(asset.body)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Revalidated on each load, so a new binary's page is never mixed with an old script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Whether `origin` is a page this relay served: the request's own host on one of the relay's
/// ports. Only IP literals and `localhost` count, since a DNS name could be rebound to this
/// address by a foreign site (whose pages would then be "same host"); pages reached by name need
/// their Origin in `security.allowed_origins`.
pub fn is_own_origin(origin: &str, host: Option<&str>, ports: Option<Ports>) -> bool {
    let (Some(host), Some(ports)) = (host, ports) else {
        return false;
    };
    let (default_port, authority) = if let Some(rest) = origin.strip_prefix("http://") {
        (80, rest)
    } else if let Some(rest) = origin.strip_prefix("https://") {
        (443, rest)
    } else {
        return false;
    };
    let Some((origin_host, origin_port)) = split_authority(authority) else {
        return false;
    };
    let Some((request_host, _)) = split_authority(host) else {
        return false;
    };
    let port = origin_port.unwrap_or(default_port);
    let literal = origin_host.eq_ignore_ascii_case("localhost")
        || origin_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok();
    literal
        && origin_host.eq_ignore_ascii_case(request_host)
        && (port == ports.main || Some(port) == ports.admin)
}

/// `host[:port]` (`[v6]:port` too) into the host and the port, if any; None when malformed.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: Option<Ports> = Some(Ports {
        main: 8080,
        admin: Some(9090),
    });

    #[test]
    fn own_origin_is_the_same_literal_host_on_a_relay_port() {
        let own = |origin, host| is_own_origin(origin, Some(host), PORTS);
        assert!(own("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(own("http://127.0.0.1:9090", "127.0.0.1:8080"));
        assert!(own("https://localhost:9090", "LOCALHOST:8080"));
        assert!(own("http://[::1]:8080", "[::1]:8080"));
        // Another port of the same host is another site's page.
        assert!(!own("http://127.0.0.1:3000", "127.0.0.1:8080"));
        assert!(!own("http://127.0.0.1", "127.0.0.1:8080"));
        // A name could be rebound to this address.
        assert!(!own(
            "http://relay.example.com:8080",
            "relay.example.com:8080"
        ));
        // Different hosts, junk.
        assert!(!own("http://127.0.0.2:8080", "127.0.0.1:8080"));
        assert!(!own("null", "127.0.0.1:8080"));
        assert!(!own("http://127.0.0.1:8080/x", "127.0.0.1:8080"));
        assert!(!own("http://127.0.0.1:99999", "127.0.0.1:8080"));
        assert!(!is_own_origin("http://127.0.0.1:8080", None, PORTS));
        assert!(!is_own_origin(
            "http://127.0.0.1:8080",
            Some("127.0.0.1:8080"),
            None
        ));
    }

    #[test]
    fn every_asset_is_found_and_unknown_paths_are_not() {
        for a in ASSETS {
            assert_eq!(asset(a.path).map(|x| x.path), Some(a.path));
            assert!(!a.body.is_empty(), "{} is empty", a.path);
        }
        assert_eq!(asset("/dashboard/").map(|a| a.path), Some("/dashboard"));
        assert!(asset("/dashboard/../status").is_none());
        assert_eq!(
            respond("/dashboard/nope.js").status(),
            StatusCode::NOT_FOUND
        );
    }
}
