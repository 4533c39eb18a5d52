//! Header and path rewriting between client and provider, and the headers the gateway
//! adds.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_SWITCHYARD_PROVIDER: HeaderName = HeaderName::from_static("x-switchyard-provider");
pub static X_SWITCHYARD_FAILOVER: HeaderName = HeaderName::from_static("x-switchyard-failover");
pub static X_SWITCHYARD_MIGRATION: HeaderName = HeaderName::from_static("x-switchyard-migration");
/// On a mirrored copy: `1` (a shadow test) or `control` (the judge's live control).
pub static X_SWITCHYARD_SHADOW: HeaderName = HeaderName::from_static("x-switchyard-shadow");

/// The gateway's own headers on a provider's answer. The HTTP/1.1 server writes them as
/// it writes the head, in place of any the provider sent of the same names, rather than
/// insert them into the provider's header map: two to four inserts of custom names, with
/// the map's growth they caused, were 2% of a request's instructions. HTTP/2 answers get them
/// in the map ([`OwnHeaders::insert_into`]), since hyper writes those heads.
#[derive(Debug, Clone)]
pub struct OwnHeaders {
    pub provider: HeaderValue,
    pub request_id: HeaderValue,
    pub migration: Option<HeaderValue>,
    pub failover: Option<HeaderValue>,
}

impl OwnHeaders {
    /// Name and value of each, in the order they are written.
    pub fn each(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        [
            (&X_SWITCHYARD_PROVIDER, Some(&self.provider)),
            (&X_REQUEST_ID, Some(&self.request_id)),
            (&X_SWITCHYARD_MIGRATION, self.migration.as_ref()),
            (&X_SWITCHYARD_FAILOVER, self.failover.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }

    /// A provider's header of this name gives way to one of these.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        // Most of a provider's headers are standard ones, which no custom name equals.
        name.as_str().starts_with("x-") && self.each().any(|(own, _)| own == name)
    }

    /// Into `headers`, replacing the provider's of the same names.
    pub fn insert_into(self, headers: &mut HeaderMap) {
        headers.insert(X_SWITCHYARD_PROVIDER.clone(), self.provider);
        headers.insert(X_REQUEST_ID.clone(), self.request_id);
        if let Some(v) = self.migration {
            headers.insert(X_SWITCHYARD_MIGRATION.clone(), v);
        }
        if let Some(v) = self.failover {
            headers.insert(X_SWITCHYARD_FAILOVER.clone(), v);
        }
    }
}

/// The fixed hop-by-hop set (RFC 9110 §7.6.1 plus the historical ones). `Connection`
/// first: [`strip_hop_by_hop`] relies on it.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Drops hop-by-hop headers: the fixed set and every header `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names to see which are present (usually none, or `Connection`),
    // instead of a hashed removal per hop-by-hop name on every message.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Its options `close` and `keep-alive` name nothing to keep: no need to look them up.
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Maps the client's path onto the provider's `base_url` path.
///
/// `/v1/chat/completions` → `<base_path>/chat/completions`: the request's `/v1` stands for
/// whatever path the provider's base URL has (`/v1`, `/api/v3`, …). A base URL without a
/// path gets the request path unchanged. `path_and_query` keeps the query string.
pub fn upstream_path(base_path: &str, path_and_query: &str) -> String {
    if base_path.is_empty() {
        return path_and_query.to_string();
    }
    let rest = match path_and_query.strip_prefix("/v1") {
        Some(r) if r.is_empty() || r.starts_with(['/', '?']) => r,
        _ => path_and_query,
    };
    let mut out = String::with_capacity(base_path.len() + rest.len() + 1);
    out.push_str(base_path);
    if !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    out
}

/// Where `name` (lower case, as `HeaderName`s are) is in [`HOP_BY_HOP`]: a string match,
/// cheaper than comparing against each name in turn.
fn hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// [`upstream_path`] would return `path_and_query` unchanged (so it need not be rebuilt).
pub fn maps_to_itself(base_path: &str, path_and_query: &str) -> bool {
    base_path.is_empty() || (base_path == "/v1" && path_and_query.starts_with("/v1/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn paths() {
        assert_eq!(
            upstream_path("/v1", "/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(
            upstream_path("/api/v3", "/v1/chat/completions?a=1"),
            "/api/v3/chat/completions?a=1"
        );
        assert_eq!(upstream_path("/v1", "/v1?x=1"), "/v1/?x=1");
        assert_eq!(upstream_path("/v1", "/models"), "/v1/models");
        assert_eq!(upstream_path("/v1", "/v10/x"), "/v1/v10/x");
        assert_eq!(upstream_path("", "/v1/models"), "/v1/models");
        for base in ["", "/v1", "/api/v3", "/v1/x"] {
            for pq in [
                "/v1/chat/completions?a=1",
                "/v1",
                "/v1?x=1",
                "/v10/x",
                "/models",
                "/",
            ] {
                if maps_to_itself(base, pq) {
                    assert_eq!(upstream_path(base, pq), pq, "{base} {pq}");
                }
            }
        }
        assert!(maps_to_itself("/v1", "/v1/chat/completions"));
    }

    #[test]
    fn hop_index_matches_the_list() {
        for (i, h) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(h.as_str()), Some(i), "{h}");
        }
        assert_eq!(hop_index("content-type"), None);
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.append(header::CONNECTION, HeaderValue::from_static("X-Second-Hop"));
        h.insert("x-second-hop", HeaderValue::from_static("1"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("x-keep"));

        let mut clean = HeaderMap::new();
        clean.insert(header::HOST, HeaderValue::from_static("a"));
        clean.insert("x-keep", HeaderValue::from_static("1"));
        let before = clean.clone();
        strip_hop_by_hop(&mut clean);
        assert_eq!(clean, before);
    }
}
