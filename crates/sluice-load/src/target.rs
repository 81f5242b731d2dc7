//! The endpoints under test: parsed base URLs and the weighted order requests are spread
//! over them.

use std::net::SocketAddr;

use http::uri::{Authority, PathAndQuery};
use http::HeaderValue;
use rustls::pki_types::ServerName;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("--url `{url}`: {problem}")]
    BadUrl { url: String, problem: String },
    #[error("--url `{url}`: cannot resolve `{authority}`: {reason}")]
    Resolve {
        url: String,
        authority: String,
        reason: String,
    },
    #[error(
        "--url-weights has {weights} weights for {urls} --url values: give one weight per URL"
    )]
    WeightCount { weights: usize, urls: usize },
    #[error("--url-weights: every weight must be a positive integer, got `{0}`")]
    BadWeight(String),
}

/// One endpoint: where to connect and what to put in the request line.
#[derive(Debug, Clone)]
pub struct Target {
    /// As given on the command line, for reports.
    pub url: String,
    pub authority: Authority,
    /// `Host` header value, made once rather than per request.
    pub host_header: HeaderValue,
    /// Origin-form path of the chat completions endpoint.
    pub path: PathAndQuery,
    /// An `https://` target: the TLS session's server name (SNI and the certificate check).
    pub tls_name: Option<ServerName<'static>>,
    pub weight: u32,
    /// Filled by [`Target::resolve`].
    pub addr: Option<SocketAddr>,
}

impl Target {
    /// Parses a base URL (`http://host:port/v1`) or a full endpoint URL
    /// (`.../v1/chat/completions`). A base URL gets `/chat/completions` appended, so both
    /// forms people copy from docs work.
    pub fn parse(url: &str, weight: u32) -> Result<Target, TargetError> {
        let bad = |problem: &str| TargetError::BadUrl {
            url: url.to_owned(),
            problem: problem.to_owned(),
        };
        let uri: http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(bad(&format!(
                    "unsupported scheme `{other}`, use http:// or https://"
                )))
            }
            None => return Err(bad("missing scheme: write it as http://HOST:PORT/v1")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("missing host"))?;
        let tls_name = if tls {
            let host = authority.host();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            Some(
                ServerName::try_from(host.to_owned())
                    .map_err(|e| bad(&format!("`{host}` is not a TLS server name: {e}")))?,
            )
        } else {
            None
        };
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported; use --header 'Authorization: Bearer ...'"));
        }
        let base = uri.path().trim_end_matches('/');
        let path = if base.ends_with("/chat/completions") {
            base.to_owned()
        } else {
            format!("{base}/chat/completions")
        };
        let path = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let path = PathAndQuery::try_from(path).map_err(|e| bad(&format!("{e}")))?;
        let host_header =
            HeaderValue::from_str(authority.as_str()).map_err(|e| bad(&format!("{e}")))?;
        Ok(Target {
            url: url.to_owned(),
            authority,
            host_header,
            path,
            tls_name,
            weight,
            addr: None,
        })
    }

    /// Resolves the host once, before the run: DNS is not part of what is measured.
    pub async fn resolve(&mut self) -> Result<SocketAddr, TargetError> {
        let host = self.authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let default_port = if self.tls_name.is_some() { 443 } else { 80 };
        let port = self.authority.port_u16().unwrap_or(default_port);
        let err = |reason: String| TargetError::Resolve {
            url: self.url.clone(),
            authority: self.authority.to_string(),
            reason,
        };
        let mut addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| err(e.to_string()))?;
        let addr = addrs
            .next()
            .ok_or_else(|| err("no address found".to_owned()))?;
        self.addr = Some(addr);
        Ok(addr)
    }
}

/// Parses `--url-weights 3,1`.
pub fn parse_weights(text: &str) -> Result<Vec<u32>, TargetError> {
    text.split(',')
        .map(|w| match w.trim().parse::<u32>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(TargetError::BadWeight(w.trim().to_owned())),
        })
        .collect()
}

/// Parses the URLs with their weights (all 1 when none are given).
pub fn parse_targets(urls: &[String], weights: Option<&[u32]>) -> Result<Vec<Target>, TargetError> {
    if let Some(w) = weights {
        if w.len() != urls.len() {
            return Err(TargetError::WeightCount {
                weights: w.len(),
                urls: urls.len(),
            });
        }
    }
    urls.iter()
        .enumerate()
        .map(|(i, u)| Target::parse(u, weights.and_then(|w| w.get(i).copied()).unwrap_or(1)))
        .collect()
}

/// The order in which request indices visit the targets: smooth weighted round robin over
/// one cycle of length Σweights, so weights 3,1 give A A B A rather than A A A B, and the
/// split is exact over every cycle rather than only on average.
pub fn weighted_cycle(weights: &[u32]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total.max(0) as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(best as u16);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_and_full_urls() {
        let t = Target::parse("http://127.0.0.1:8080/v1", 1).unwrap();
        assert_eq!(t.path.as_str(), "/v1/chat/completions");
        assert_eq!(t.authority.as_str(), "127.0.0.1:8080");
        let t = Target::parse("http://h/v1/chat/completions/", 1).unwrap();
        assert_eq!(t.path.as_str(), "/v1/chat/completions");
        let t = Target::parse("http://h:1/openai/v1?api-version=2", 1).unwrap();
        assert_eq!(t.path.as_str(), "/openai/v1/chat/completions?api-version=2");
        let t = Target::parse("https://api.example/v1", 1).unwrap();
        assert_eq!(
            t.tls_name.unwrap().to_str(),
            "api.example",
            "https targets name their TLS server"
        );
        assert!(Target::parse("http://h/v1", 1).unwrap().tls_name.is_none());
        assert!(Target::parse("ftp://h/v1", 1).is_err());
        let e = Target::parse("localhost:8000/v1", 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--url `localhost:8000/v1`"), "{e}");
    }

    #[test]
    fn weights() {
        assert_eq!(weighted_cycle(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(weighted_cycle(&[1, 1]), vec![0, 1]);
        let c = weighted_cycle(&[5, 2, 3]);
        assert_eq!(c.len(), 10);
        assert_eq!(c.iter().filter(|&&i| i == 1).count(), 2);
        assert_eq!(parse_weights("3, 1").unwrap(), vec![3, 1]);
        assert!(parse_weights("3,0").is_err());
        let urls = vec!["http://a/v1".to_owned()];
        assert!(matches!(
            parse_targets(&urls, Some(&[1, 2])),
            Err(TargetError::WeightCount { .. })
        ));
    }
}
