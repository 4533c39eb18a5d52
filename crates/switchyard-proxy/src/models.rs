//! Providers that name models differently (`providers.NAME.models`): the request's model
//! is read ahead of its body (only as far as it takes), renamed for the provider that gets
//! it (again on failover), refused when that provider does not serve it, and the
//! provider's model list is shown under the names clients use. Stats, pricing and logs
//! keep the client's name.

use crate::client_body::ClientBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use switchyard_core::config::{ModelRoute, ProviderConfig};
use switchyard_core::event::Class;
use switchyard_core::ErrorKind;

use crate::accounted::Accounted;
use crate::errors::{BodyTooLarge, ClientBodyError};
use crate::exchange::Exchange;
use crate::openai::{ModelPrefix, ModelSearch};
use crate::pool::Lease;
use crate::request_body::{BoxedBody, RequestBody};
use crate::response_body::{BodySummary, GatewayBody};
use crate::upstream::UpstreamBody;

/// The most of a provider's model list read to rename its models.
const MODEL_LIST_MAX: usize = 1 << 20;

/// A body read ahead to learn its model.
pub(crate) struct ReadAhead {
    pub(crate) prefix: ModelPrefix,
    /// The rest of the body, unless the prefix is all of it.
    pub(crate) rest: Option<ClientBody>,
}

/// Whether a request must be read ahead: either side renames models.
pub(crate) fn must_read_ahead(ex: &Exchange, method: &Method) -> bool {
    let providers = &ex.snap.config.providers;
    method == Method::POST && ex.candidates().any(|i| providers[i].rewrites_models())
}

/// Reads the body's start until its model is known (the rest streams untouched later);
/// refuses (answering for the exchange) a body the client broke, one over the limit, or a
/// model the first provider does not serve.
pub(crate) async fn read_ahead(
    ex: Box<Exchange>,
    incoming: ClientBody,
) -> Result<(Box<Exchange>, ReadAhead), Response<GatewayBody>> {
    match read_model(incoming).await {
        Ok(read) => served(ex, read),
        Err(broke) => Err(ex.client_broke(&broke)),
    }
}

/// Reads the body's start until its model is known, before any provider is chosen (a
/// migration that matches by model needs it to route).
pub(crate) async fn read_model(mut incoming: ClientBody) -> Result<ReadAhead, ClientBodyError> {
    let mut search = ModelSearch::default();
    let (prefix, complete) = loop {
        match incoming.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    if let Some(p) = search.feed(&d) {
                        break (p, false);
                    }
                }
            }
            Some(Err(e)) => return Err(ClientBodyError::of(e)),
            None => break (search.finish(), true),
        }
    };
    let rest = (!complete).then_some(incoming);
    Ok(ReadAhead { prefix, rest })
}

/// A body already read whole (to ask its stream for usage): its model is in it, and
/// `held` is all of it.
// The error is the refusal's answer, made once and handed up to the client as it is.
#[allow(clippy::result_large_err)]
pub(crate) fn read_whole(
    ex: Box<Exchange>,
    body: Bytes,
) -> Result<(Box<Exchange>, ReadAhead), Response<GatewayBody>> {
    let prefix = ModelSearch::whole(body);
    served(ex, ReadAhead { prefix, rest: None })
}

/// A body start over the limit, or a model the first provider does not serve, refused.
#[allow(clippy::result_large_err)]
pub(crate) fn served(
    ex: Box<Exchange>,
    read: ReadAhead,
) -> Result<(Box<Exchange>, ReadAhead), Response<GatewayBody>> {
    let limit = ex.snap.config.server.max_body_bytes;
    let prefix = &read.prefix;
    if prefix.held.len() as u64 > limit {
        return Err(ex.fail(ErrorKind::BodyTooLarge, &BodyTooLarge::message(limit)));
    }
    if let Some(model) = prefix.client_model() {
        let first = &ex.upstream().config;
        if first.model_for(model) == ModelRoute::Refuse {
            let name = &first.name;
            let msg = format!(
                "model `{model}` is not served through provider `{name}` (providers.{name}.models)"
            );
            return Err(ex.fail(ErrorKind::BadRequest, &msg));
        }
    }
    Ok((ex, read))
}

/// The read-ahead body start as provider `p` must get it: the model renamed when `p` maps
/// it (a model it would refuse goes as it is: only the first provider's refusal answers
/// the client).
pub(crate) fn renamed_for(prefix: &ModelPrefix, p: &ProviderConfig) -> Bytes {
    match prefix.client_model().map(|m| p.model_for(m)) {
        Some(ModelRoute::Rename(name)) => prefix.renamed(name),
        _ => prefix.held.clone(),
    }
}

/// The body the first provider gets after a read-ahead: the start renamed for it (its
/// declared length following), then the rest as it streams.
pub(crate) fn first_body(
    ex: &mut Exchange,
    read: ReadAhead,
    headers: &mut http::HeaderMap,
    limit: u64,
) -> BoxedBody {
    let ReadAhead { prefix, rest } = read;
    let held = renamed_for(&prefix, &ex.upstream().config);
    set_length(headers, prefix.held.len(), held.len());
    let (body, shared) = RequestBody::after_prefix(held, rest, limit, prefix.client_model());
    ex.shared = Some(shared);
    ex.model_prefix = Some(prefix);
    body
}

/// A declared `Content-Length` follows a body start that changed length.
pub(crate) fn set_length(headers: &mut http::HeaderMap, was: usize, now: usize) {
    if was == now {
        return;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared {
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(n - was.min(n) + now),
        );
    }
}

/// Nothing was sent yet: the body's start renamed for provider `p` instead.
pub(crate) fn rename_for(req: &mut Request<BoxedBody>, prefix: &ModelPrefix, p: &ProviderConfig) {
    let held = renamed_for(prefix, p);
    let before = req.body().prefix_len();
    if req.body_mut().replace_prefix(held.clone()) {
        set_length(req.headers_mut(), before, held.len());
    }
}

/// The body a refused request is sent again with: its replay copy, sent as provider
/// `from` names the model, renamed for provider `to`.
pub(crate) fn replay_for(
    replay: Bytes,
    prefix: Option<&ModelPrefix>,
    from: &ProviderConfig,
    to: &ProviderConfig,
) -> Bytes {
    let Some(prefix) = prefix else { return replay };
    let sent = renamed_for(prefix, from).len();
    let mut b = renamed_for(prefix, to).to_vec();
    b.extend_from_slice(&replay[sent.min(replay.len())..]);
    Bytes::from(b)
}

/// Whether `resp` is the provider's model list, to be shown under client names.
pub(crate) fn lists_models(ex: &Exchange, resp: &Response<UpstreamBody>) -> bool {
    ex.method == Method::GET
        && ex.uri.path().ends_with("/models")
        && resp.status().is_success()
        && !ex.upstream().config.models.is_empty()
}

/// Answers the provider's model list with the client-facing names of the models it maps.
pub(crate) async fn respond_list(
    mut ex: Box<Exchange>,
    resp: Response<UpstreamBody>,
    lease: Lease,
) -> Response<GatewayBody> {
    let (mut parts, body) = resp.into_parts();
    let Ok(body) = Limited::new(body, MODEL_LIST_MAX).collect().await else {
        let msg = format!(
            "provider `{}` sent a model list that could not be read",
            ex.upstream().name
        );
        return ex.fail(ErrorKind::UpstreamBroken, &msg);
    };
    lease.release();
    let body = body.to_bytes();
    let provider = &ex.upstream().config;
    let body = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(mut v) => {
            if let Some(list) = v.get_mut("data").and_then(|d| d.as_array_mut()) {
                for m in list {
                    let client = m
                        .get("id")
                        .and_then(|id| id.as_str())
                        .and_then(|id| provider.client_model(id))
                        .map(str::to_string);
                    if let Some(c) = client {
                        m["id"] = serde_json::Value::String(c);
                    }
                }
            }
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        Err(_) => body,
    };
    ex.answer_headers(&mut parts.headers);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let status = parts.status.as_u16();
    let ttfb = Some(ex.start.elapsed());
    ex.account(Accounted {
        ttfb,
        summary: BodySummary {
            bytes: body.len() as u64,
            ..BodySummary::default()
        },
        ..Accounted::answer(status, Class::of_status(status))
    });
    Response::from_parts(parts, GatewayBody::full(body))
}
