//! Where a request goes. Origin-form requests (`POST /v1/...`) follow the reverse routes
//! (longest path prefix wins); absolute-form requests (`GET http://host/path`, forward
//! proxy) and requests decrypted from a CONNECT tunnel go to the origin they name, and that
//! origin then counts in their key.

use http::request::Parts;
use http::uri::Authority;
use http::StatusCode;

/// A reverse route: requests whose path is `prefix` or lies below it go to `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// A path prefix matched on segment boundaries: `/openai` matches `/openai` and
    /// `/openai/v1/models`, not `/openaiv2`. `/` matches every path.
    pub prefix: String,
    /// `http://` or `https://` base URL, optionally with a path, that the (possibly
    /// stripped) request path and the query are appended to.
    pub url: String,
    /// Remove `prefix` from the path before appending it to `url`.
    pub strip_prefix: bool,
}

impl Route {
    pub fn new(prefix: impl Into<String>, url: impl Into<String>, strip_prefix: bool) -> Route {
        Route {
            prefix: prefix.into(),
            url: url.into(),
            strip_prefix,
        }
    }

    /// The route of `--upstream URL`: every path, unchanged.
    pub fn catch_all(url: impl Into<String>) -> Route {
        Route::new("/", url, true)
    }

    /// The prefix without a trailing `/` (empty for the catch-all).
    fn bare_prefix(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }

    fn matches(&self, path: &str) -> bool {
        prefix_covers(&self.prefix, path)
    }

    /// The upstream URL for `path` and the raw `query`.
    pub fn upstream_url(&self, path: &str, query: Option<&str>) -> String {
        let path = if self.strip_prefix {
            match path.strip_prefix(self.bare_prefix()) {
                Some("") => "/",
                Some(rest) => rest,
                None => path,
            }
        } else {
            path
        };
        let mut url = format!("{}{}", self.url.trim_end_matches('/'), path);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        url
    }

    /// Why this route cannot be used, as `(field, message)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.prefix.starts_with('/') {
            return Err(("prefix", format!("{:?} must start with `/`", self.prefix)));
        }
        if self
            .prefix
            .contains(|c: char| c == '?' || c == '#' || c.is_whitespace())
        {
            return Err((
                "prefix",
                format!(
                    "{:?} must be a plain path (no `?`, `#` or spaces)",
                    self.prefix
                ),
            ));
        }
        check_base_url(&self.url).map_err(|m| ("url", m))
    }
}

/// An `http://` or `https://` URL with a host and no query or fragment.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?} must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{url:?} must not have a query or fragment"));
    }
    Ok(())
}

/// The route with the longest prefix matching `path`.
/// Whether a route of `prefix` serves `path`: the prefix (a trailing `/` ignored) matches
/// whole path segments, and `/` matches every path.
pub fn prefix_covers(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

pub fn select<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
    routes
        .iter()
        .filter(|r| r.matches(path))
        .max_by_key(|r| r.bare_prefix().len())
}

/// Marks a request that arrived inside a CONNECT tunnel with the tunnel's origin
/// (`https://host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelOrigin(pub String);

/// Where one request is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The full upstream URL, query included.
    pub url: String,
    /// `scheme://host:port` for forward-proxy and tunnelled requests; `None` for reverse
    /// routes, whose keys do not include an origin.
    pub origin: Option<String>,
}

/// Why a request has no target: an HTTP status, an error type and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoTarget {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

/// The target of a request: its tunnel's origin, the origin of its absolute-form URI, or
/// its reverse route.
pub fn resolve(routes: &[Route], parts: &Parts) -> Result<Target, NoTarget> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    if let Some(TunnelOrigin(origin)) = parts.extensions.get::<TunnelOrigin>() {
        return Ok(Target {
            url: format!("{origin}{path_and_query}"),
            origin: Some(origin.clone()),
        });
    }
    if let (Some(scheme), Some(authority)) = (parts.uri.scheme_str(), parts.uri.authority()) {
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(NoTarget {
                status: StatusCode::BAD_REQUEST,
                kind: "unsupported_scheme",
                message: format!(
                    "the proxy forwards http:// and https:// URLs only, not {scheme}://"
                ),
            });
        }
        let origin = origin_of(&scheme, authority);
        return Ok(Target {
            url: format!("{origin}{path_and_query}"),
            origin: Some(origin),
        });
    }
    let path = parts.uri.path();
    match select(routes, path) {
        Some(route) => Ok(Target {
            url: route.upstream_url(path, parts.uri.query()),
            origin: None,
        }),
        None => Err(NoTarget {
            status: StatusCode::BAD_GATEWAY,
            kind: "no_upstream",
            message: if routes.is_empty() {
                format!(
                    "no upstream is configured for {path}: this proxy has no reverse routes \
                     (start it with --upstream URL or routes in --config), so it only serves \
                     forward-proxy requests (HTTP_PROXY/HTTPS_PROXY)"
                )
            } else {
                let prefixes: Vec<&str> = routes.iter().map(|r| r.prefix.as_str()).collect();
                format!(
                    "no upstream is configured for {path}; configured prefixes: {}",
                    prefixes.join(", ")
                )
            },
        }),
    }
}

/// `scheme://host:port`, lowercase, with the scheme's default port made explicit.
pub fn origin_of(scheme: &str, authority: &Authority) -> String {
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    format!(
        "{scheme}://{}:{port}",
        authority.host().to_ascii_lowercase()
    )
}

/// How an origin appears in a recording's file name: host, and the port only when it is
/// not the scheme's default (`api.openai.com`, `127.0.0.1:8080`).
pub fn origin_label(origin: &str) -> String {
    let (scheme, rest) = origin.split_once("://").unwrap_or(("", origin));
    let default = if scheme == "https" { ":443" } else { ":80" };
    rest.strip_suffix(default).unwrap_or(rest).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_wins_on_segment_boundaries() {
        let routes = vec![
            Route::catch_all("http://root"),
            Route::new("/openai", "http://a", true),
            Route::new("/openai/v2/", "http://b", false),
        ];
        let url = |path: &str| {
            select(&routes, path)
                .unwrap()
                .upstream_url(path, Some("x=1"))
        };
        assert_eq!(url("/openai/v1/models"), "http://a/v1/models?x=1");
        assert_eq!(url("/openai"), "http://a/?x=1");
        assert_eq!(url("/openai/v2/models"), "http://b/openai/v2/models?x=1");
        assert_eq!(url("/openaiv2/models"), "http://root/openaiv2/models?x=1");
        assert_eq!(url("/v1/models"), "http://root/v1/models?x=1");
        assert!(select(&routes[1..], "/other").is_none());
    }

    #[test]
    fn routes_are_checked() {
        assert!(Route::new("/a", "https://x.example/base", true)
            .check()
            .is_ok());
        assert_eq!(
            Route::new("a", "https://x", true).check().unwrap_err().0,
            "prefix"
        );
        assert_eq!(
            Route::new("/a", "ftp://x", true).check().unwrap_err().0,
            "url"
        );
        assert_eq!(
            Route::new("/a", "https://x/?q=1", true)
                .check()
                .unwrap_err()
                .0,
            "url"
        );
        assert_eq!(
            Route::new("/a", "not a url", true).check().unwrap_err().0,
            "url"
        );
    }

    #[test]
    fn origins_have_explicit_ports_and_short_labels() {
        let a: Authority = "API.OpenAI.com".parse().unwrap();
        assert_eq!(origin_of("https", &a), "https://api.openai.com:443");
        assert_eq!(origin_label("https://api.openai.com:443"), "api.openai.com");
        let b: Authority = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(origin_of("http", &b), "http://127.0.0.1:8080");
        assert_eq!(origin_label("http://127.0.0.1:8080"), "127.0.0.1:8080");
    }
}
