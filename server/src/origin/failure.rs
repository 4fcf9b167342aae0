//! What an origin error means: one line for people, and a class for the retry and stale rules.
//!
//! object_store's errors carry the whole HTTP exchange in their text: method, URL, elapsed time,
//! and for an error status the raw response body (an S3 `<Error>` XML document). Operators need
//! the status and the service's error code, not the XML; the read path needs to know whether
//! the origin is unreachable (a reason to serve the last known version under `stale_if_error`)
//! or answered definitively (denied, missing). The status and the body are only reachable
//! through the text (object_store keeps its retry error type private), so the text is parsed
//! here, in one place, with tests for each shape.

use std::error::Error as StdError;

use object_store::client::{HttpError, HttpErrorKind};

/// An origin error taken apart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Failure {
    /// HTTP status code, when the origin answered with an error status.
    pub status: Option<u16>,
    /// The service's error code (`SlowDown`, `AccessDenied`, `InvalidAccessKeyId`, ...).
    pub code: Option<String>,
    /// The service's error message.
    pub message: Option<String>,
    /// No HTTP answer: connection refused or reset, timed out, TLS failure.
    pub transport: Option<Transport>,
    /// An answer no retry changes: denied, unsupported, an invalid request.
    pub definitive: bool,
    /// The one-line description.
    pub summary: String,
}

/// Failures below HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Connect,
    Timeout,
    /// The connection broke while a request or response was on it.
    Interrupted,
    /// Anything else below HTTP (TLS, decoding, a client that could not be built).
    Other,
}

impl Failure {
    /// Whether the failure says the origin cannot be reached right now (network, overload,
    /// server errors), as opposed to an answer about the object or the credentials.
    pub fn unreachable(&self) -> bool {
        match self.status {
            Some(s) => s >= 500 || s == 429 || s == 408,
            None => matches!(
                self.transport,
                Some(Transport::Connect | Transport::Timeout | Transport::Interrupted)
            ),
        }
    }

    /// Whether another attempt may succeed (everything but definitive answers: bad requests,
    /// denied credentials, unsupported operations).
    pub fn retryable(&self) -> bool {
        if self.definitive {
            return false;
        }
        match (self.status, self.transport) {
            (Some(s), _) => s >= 500 || s == 429 || s == 408,
            (None, Some(t)) => t != Transport::Other,
            // Nothing known about it: another attempt is cheap and bounded.
            (None, None) => true,
        }
    }
}

/// Take `e` apart.
pub fn classify(e: &object_store::Error) -> Failure {
    let text = e.to_string();
    let mut f = Failure {
        definitive: matches!(
            e,
            object_store::Error::NotSupported { .. }
                | object_store::Error::NotImplemented { .. }
                | object_store::Error::InvalidPath { .. }
                | object_store::Error::UnknownConfigurationKey { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ),
        ..Failure::default()
    };
    if let Some((status, body)) = status_and_body(&text) {
        f.status = Some(status);
        f.code = xml_tag(body, "Code");
        f.message = xml_tag(body, "Message");
        if f.code.is_none() && !body.trim_start().starts_with('<') && !body.trim().is_empty() {
            f.message = Some(first_line(body, 200));
        }
    }
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<HttpError>() {
            f.transport = Some(match h.kind() {
                HttpErrorKind::Connect => Transport::Connect,
                HttpErrorKind::Timeout => Transport::Timeout,
                HttpErrorKind::Interrupted | HttpErrorKind::Request => Transport::Interrupted,
                _ => Transport::Other,
            });
            break;
        }
        source = s.source();
    }
    if f.status.is_some() {
        f.transport = None;
    }
    f.summary = summarise(e, &text, &f);
    f
}

fn summarise(e: &object_store::Error, text: &str, f: &Failure) -> String {
    let request = request_of(text);
    if let Some(status) = f.status {
        let mut out = format!("HTTP {status}");
        if let Some(reason) = reason_phrase(text, status) {
            out.push(' ');
            out.push_str(reason);
        }
        if let Some(code) = &f.code {
            out.push_str(", ");
            out.push_str(code);
        }
        if let Some(message) = &f.message {
            out.push_str(": ");
            out.push_str(message);
        }
        if let Some(req) = request {
            out.push_str(&format!(" ({req})"));
        }
        return out;
    }
    if f.transport.is_some() {
        // The innermost causes say what happened ("Connection refused (os error 111)",
        // "connection closed before message completed").
        let what = match f.transport {
            Some(Transport::Connect) => "cannot connect",
            Some(Transport::Timeout) => "timed out",
            Some(Transport::Interrupted) => "connection broken",
            _ => "request failed",
        };
        let cause = causes(e);
        let mut out = what.to_string();
        if !cause.is_empty() {
            out.push_str(": ");
            out.push_str(&cause);
        }
        if let Some(req) = request {
            out.push_str(&format!(" ({req})"));
        }
        return out;
    }
    first_line(text, 400)
}

/// `GET http://host/bucket/key` from object_store's "Error performing GET … in 5ms" text.
fn request_of(text: &str) -> Option<String> {
    let rest = text.split("Error performing ").nth(1)?;
    let mut words = rest.split_whitespace();
    let method = words.next()?;
    let uri = words.next()?;
    if uri == "in" {
        return Some(method.to_string());
    }
    Some(format!("{method} {uri}"))
}

/// The status and the body after "status code: 503 Service Unavailable: ".
fn status_and_body(text: &str) -> Option<(u16, &str)> {
    for marker in ["status code: ", "error response: "] {
        if let Some(i) = text.find(marker) {
            let rest = &text[i + marker.len()..];
            let code: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(status) = code.parse::<u16>() {
                let body = rest.split_once(": ").map_or("", |(_, b)| b);
                return Some((status, body));
            }
        }
    }
    // Precondition and not-found errors say "status: 412" in some stores.
    None
}

fn reason_phrase(text: &str, status: u16) -> Option<&str> {
    let marker = format!("{status} ");
    let i = text.find(&marker)?;
    let rest = &text[i + marker.len()..];
    let end = rest.find(':').unwrap_or(rest.len());
    let reason = rest[..end].trim();
    (!reason.is_empty() && reason.len() < 40 && !reason.contains('<')).then_some(reason)
}

/// The text of the first `<tag>…</tag>` in an XML body, unescaped, on one line.
pub fn xml_tag(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&close)? + start;
    let value = body[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    let value = first_line(&value, 300);
    (!value.is_empty()).then_some(value)
}

/// The causes below the outermost error, joined, without repeats.
fn causes(e: &object_store::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = StdError::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        let text = first_line(&text, 200);
        if !text.is_empty()
            && !text.starts_with("Error performing")
            && !parts.iter().any(|p| p.contains(&text))
        {
            parts.retain(|p| !text.contains(p.as_str()));
            parts.push(text);
        }
        source = s.source();
    }
    // The deepest cause is the most specific; keep at most the last two.
    let n = parts.len();
    parts[n.saturating_sub(2)..].join(": ")
}

fn first_line(s: &str, max: usize) -> String {
    let line: String = s
        .split(['\n', '\r'])
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let line = line.trim().to_string();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_string().into(),
        }
    }

    #[test]
    fn s3_error_bodies_become_status_and_code() {
        let e = generic(
            "Error performing GET http://127.0.0.1:9000/bkt/ds/obj.bin in 3ms - Server returned non-2xx status code: 503 Service Unavailable: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>1</RequestId></Error>",
        );
        let f = classify(&e);
        assert_eq!(f.status, Some(503));
        assert_eq!(f.code.as_deref(), Some("SlowDown"));
        assert!(f.unreachable() && f.retryable());
        assert_eq!(
            f.summary,
            "HTTP 503 Service Unavailable, SlowDown: Please reduce your request rate. (GET http://127.0.0.1:9000/bkt/ds/obj.bin)"
        );
        assert!(!f.summary.contains('<'));
    }

    #[test]
    fn denied_is_an_answer_not_an_outage() {
        let e = generic(
            "Error performing HEAD http://h/b/k in 1ms - Server returned non-2xx status code: 403 Forbidden: <Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>",
        );
        let f = classify(&e);
        assert_eq!(f.status, Some(403));
        assert!(!f.unreachable() && !f.retryable());
        assert!(
            f.summary
                .starts_with("HTTP 403 Forbidden, InvalidAccessKeyId: The AWS")
        );
    }

    #[test]
    fn empty_bodies_and_plain_text_bodies() {
        let f = classify(&generic(
            "Error performing HEAD http://h/b/k in 1ms - Server returned non-2xx status code: 500 Internal Server Error: ",
        ));
        assert_eq!(
            f.summary,
            "HTTP 500 Internal Server Error (HEAD http://h/b/k)"
        );
        let f = classify(&generic(
            "Error performing GET http://h/b/k in 1ms - Server returned non-2xx status code: 502 Bad Gateway: upstream\nwent away",
        ));
        assert_eq!(f.message.as_deref(), Some("upstream went away"));
    }

    #[test]
    fn transport_failures_are_unreachable_and_name_their_cause() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let http = HttpError::new(HttpErrorKind::Connect, io);
        let e = object_store::Error::Generic {
            store: "S3",
            source: Box::new(http),
        };
        let f = classify(&e);
        assert_eq!(f.transport, Some(Transport::Connect));
        assert!(f.unreachable() && f.retryable());
        assert!(f.summary.starts_with("cannot connect"), "{}", f.summary);
        assert!(f.summary.contains("Connection refused"), "{}", f.summary);
        // Unknown failures are retried but are not an outage.
        let f = classify(&generic("something odd"));
        assert!(f.retryable() && !f.unreachable());
        assert_eq!(f.summary, "Generic S3 error: something odd");
    }

    #[test]
    fn xml_tags_are_unescaped_and_bounded() {
        assert_eq!(
            xml_tag(
                "<Error><Message>a &amp; b &lt;c&gt;</Message></Error>",
                "Message"
            )
            .as_deref(),
            Some("a & b <c>")
        );
        assert_eq!(xml_tag("<Error></Error>", "Code"), None);
        assert_eq!(xml_tag("<Code></Code>", "Code"), None);
        let long = format!("<Message>{}</Message>", "x".repeat(1000));
        assert!(xml_tag(&long, "Message").unwrap().chars().count() <= 301);
    }

    #[test]
    fn other_errors_keep_their_first_line() {
        let f = classify(&object_store::Error::NotImplemented {
            operation: "list".into(),
            implementer: "x".into(),
        });
        assert_eq!(f.status, None);
        assert!(!f.unreachable() && !f.retryable());
        assert!(f.summary.contains("not yet implemented"), "{}", f.summary);
    }
}
