//! Request routing (HAProxy's `use_backend` rules on `ssl_fc_sni`, `hdr(host)` and `path_beg`):
//! the first route whose every condition matches picks the backend, else the frontend's default.

use crate::sni::sni_matches;

/// One route of an http frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoute {
    /// The TLS server name the client asked for (TLS-terminating frontends): exact or
    /// `*.suffix`; `None` matches any connection.
    pub sni: Option<String>,
    /// Host without port: exact (case-insensitive) or `*.suffix`; `None` matches any host.
    pub host: Option<String>,
    /// The path must start with this; `None` matches any path.
    pub path_prefix: Option<String>,
    /// Index of the backend in the frontend's backend list.
    pub backend: usize,
}

impl HttpRoute {
    /// Whether a request for `host` (port stripped) and `path`, on a connection whose TLS
    /// server name is `sni`, takes this route.
    pub fn matches(&self, sni: Option<&str>, host: Option<&str>, path: &str) -> bool {
        let sni_ok = match (&self.sni, sni) {
            (None, _) => true,
            (Some(p), Some(n)) => sni_matches(p, n),
            (Some(_), None) => false,
        };
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(p), Some(h)) => sni_matches(p, h),
            (Some(_), None) => false,
        };
        sni_ok && host_ok && self.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    }
}

/// The backend of a request: the first matching route's, else `default`.
pub fn pick(routes: &[HttpRoute], default: Option<usize>, sni: Option<&str>, host: Option<&str>, path: &str) -> Option<usize> {
    routes.iter().find(|r| r.matches(sni, host, path)).map(|r| r.backend).or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_then_default() {
        let r = |host: Option<&str>, path: Option<&str>, backend| HttpRoute {
            sni: None,
            host: host.map(Into::into),
            path_prefix: path.map(Into::into),
            backend,
        };
        let routes = [r(Some("api.example"), Some("/v2"), 0), r(Some("*.example"), None, 1), r(None, Some("/static/"), 2)];
        assert_eq!(pick(&routes, Some(9), None, Some("API.example"), "/v2/x"), Some(0));
        assert_eq!(pick(&routes, Some(9), None, Some("api.example"), "/v1"), Some(1));
        assert_eq!(pick(&routes, Some(9), None, Some("other"), "/static/a.css"), Some(2));
        assert_eq!(pick(&routes, Some(9), None, None, "/"), Some(9));
        assert_eq!(pick(&routes, None, None, Some("other"), "/"), None);
    }

    #[test]
    fn sni_conditions_need_a_matching_server_name() {
        let routes = [
            HttpRoute { sni: Some("*.apps.test".into()), host: None, path_prefix: Some("/api".into()), backend: 0 },
            HttpRoute { sni: Some("admin.test".into()), host: None, path_prefix: None, backend: 1 },
        ];
        assert_eq!(pick(&routes, Some(9), Some("web.apps.test"), Some("x"), "/api/v1"), Some(0));
        assert_eq!(pick(&routes, Some(9), Some("web.apps.test"), Some("x"), "/"), Some(9));
        assert_eq!(pick(&routes, Some(9), Some("ADMIN.test"), None, "/api"), Some(1));
        assert_eq!(pick(&routes, Some(9), None, Some("admin.test"), "/"), Some(9), "the Host header is no server name");
    }
}
