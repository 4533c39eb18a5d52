//! Errors the gateway makes itself, and the one place they map to HTTP.
//!
//! The kind says which side failed; status, OpenAI error `type`/`code` and the
//! metric label all derive from it, never from free text.

use serde_json::json;

use crate::event::Class;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Missing or unknown client key.
    Unauthorized,
    /// Request body over the configured limit.
    BodyTooLarge,
    /// The client key is over its request rate or requests in flight.
    RateLimited,
    /// A method the gateway does not forward (`CONNECT`).
    MethodNotAllowed,
    /// Malformed request the gateway refuses to forward.
    BadRequest,
    /// Could not connect to the provider (nothing was sent).
    UpstreamConnect,
    /// The provider sent no response head in time.
    UpstreamTimeout,
    /// The provider broke the exchange after it began.
    UpstreamBroken,
    /// The gateway is serving its maximum number of connections (`server.max_connections`).
    Overloaded,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Unauthorized => 401,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::RateLimited => 429,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::BadRequest => 400,
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamBroken => 502,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::Overloaded => 503,
        }
    }

    /// OpenAI's `error.type`.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::BodyTooLarge | ErrorKind::BadRequest => "invalid_request_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::MethodNotAllowed => "invalid_request_error",
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamTimeout | ErrorKind::UpstreamBroken => {
                "upstream_error"
            }
            ErrorKind::Overloaded => "server_error",
        }
    }

    /// OpenAI's `error.code`: stable, machine-readable.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "invalid_api_key",
            ErrorKind::BodyTooLarge => "request_too_large",
            ErrorKind::RateLimited => "rate_limit_exceeded",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UpstreamConnect => "upstream_unreachable",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamBroken => "upstream_broken",
            ErrorKind::Overloaded => "overloaded",
        }
    }

    /// Whose fault a request that ended in this error is (see [`Class`]).
    pub fn class(self) -> Class {
        match self {
            ErrorKind::UpstreamTimeout => Class::Timeout,
            ErrorKind::UpstreamConnect => Class::Connect,
            ErrorKind::UpstreamBroken => Class::StreamCut,
            ErrorKind::BodyTooLarge
            | ErrorKind::BadRequest
            | ErrorKind::Unauthorized
            | ErrorKind::RateLimited
            | ErrorKind::MethodNotAllowed => Class::ClientFault,
            // The gateway's own capacity; answered before any provider is chosen, so it is
            // never accounted against one.
            ErrorKind::Overloaded => Class::ServerError,
        }
    }

    /// The OpenAI-shaped body: `{"error": {"message", "type", "code"}}`.
    pub fn body(self, message: &str) -> String {
        json!({"error": {"message": message, "type": self.error_type(), "code": self.code()}})
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let v: serde_json::Value =
            serde_json::from_str(&ErrorKind::UpstreamTimeout.body("no answer in 30s")).unwrap();
        assert_eq!(v["error"]["message"], "no answer in 30s");
        assert_eq!(v["error"]["type"], "upstream_error");
        assert_eq!(v["error"]["code"], "upstream_timeout");
        assert_eq!(ErrorKind::UpstreamTimeout.status(), 504);
        assert_eq!(ErrorKind::UpstreamConnect.status(), 502);
        assert_eq!(ErrorKind::BodyTooLarge.status(), 413);
        assert_eq!(ErrorKind::Unauthorized.status(), 401);
    }

    #[test]
    fn errors_the_gateway_makes_are_attributed() {
        assert_eq!(ErrorKind::UpstreamTimeout.class(), Class::Timeout);
        assert_eq!(ErrorKind::UpstreamBroken.class(), Class::StreamCut);
        assert_eq!(ErrorKind::BodyTooLarge.class(), Class::ClientFault);
        assert_eq!(ErrorKind::Overloaded.class(), Class::ServerError);
    }
}
