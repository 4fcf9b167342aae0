//! Credential endpoints for tests: an STS that exchanges one web identity token for temporary
//! keys (`AssumeRoleWithWebIdentity`, over HTTP or HTTPS), and a container credentials
//! endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`) that wants one authorization token. Both
//! count their calls and refuse anything else with the error a real service gives.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Temporary keys a credential endpoint hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: String,
}

impl Issued {
    pub fn new(tag: &str) -> Issued {
        Issued {
            access_key: format!("ASIA{}", tag.to_ascii_uppercase()),
            secret_key: format!("{tag}-temporary-secret"),
            session_token: format!("{tag}-session-token"),
        }
    }
}

enum Kind {
    Sts { role_arn: String, token: String },
    Container { authorization: Option<String> },
}

/// A credential endpoint on a loopback port; stops when dropped.
pub struct CredentialServer {
    addr: SocketAddr,
    scheme: &'static str,
    calls: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for CredentialServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CredentialServer {
    /// An STS that gives `issued` for `token` presented for `role_arn`; HTTPS with `tls`.
    pub async fn sts(
        role_arn: &str,
        token: &str,
        issued: Issued,
        tls: Option<(&Path, &Path)>,
    ) -> CredentialServer {
        let kind = Kind::Sts {
            role_arn: role_arn.into(),
            token: token.into(),
        };
        CredentialServer::serve(kind, issued, tls).await
    }

    /// A container credentials endpoint that wants `authorization` (if any).
    pub async fn container(authorization: Option<&str>, issued: Issued) -> CredentialServer {
        let kind = Kind::Container {
            authorization: authorization.map(str::to_string),
        };
        CredentialServer::serve(kind, issued, None).await
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Credentials handed out.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// Requests refused.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    async fn serve(kind: Kind, issued: Issued, tls: Option<(&Path, &Path)>) -> CredentialServer {
        crate::init();
        let acceptor = tls.map(|(cert, key)| crate::tls_acceptor(cert, key, &[b"http/1.1"]));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new((kind, issued, calls.clone(), refused.clone()));
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&shared, req).await) }
                    });
                    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(socket), service).await;
                        }
                        Some(a) => {
                            if let Ok(s) = a.accept(socket).await {
                                let _ = http.serve_connection(TokioIo::new(s), service).await;
                            }
                        }
                    }
                });
            }
        });
        CredentialServer {
            addr,
            scheme,
            calls,
            refused,
            task,
        }
    }
}

type Shared = (Kind, Issued, Arc<AtomicUsize>, Arc<AtomicUsize>);

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

/// Form or query parameters, decoded.
fn params(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn answer(shared: &Shared, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (kind, issued, calls, refused) = shared;
    match kind {
        Kind::Sts { role_arn, token } => {
            let query = req.uri().query().unwrap_or("").to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut p = params(&query);
            p.extend(params(&String::from_utf8_lossy(&body)));
            let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            let error = |code: &str, message: &str| {
                refused.fetch_add(1, Ordering::Relaxed);
                respond(
                    StatusCode::BAD_REQUEST,
                    "text/xml",
                    format!(
                        "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error></ErrorResponse>"
                    ),
                )
            };
            if get("Action") != Some("AssumeRoleWithWebIdentity") {
                return error("InvalidAction", "only AssumeRoleWithWebIdentity is served");
            }
            if get("RoleArn") != Some(role_arn.as_str()) {
                return error("AccessDenied", "not authorized to assume this role");
            }
            if get("WebIdentityToken") != Some(token.as_str()) {
                return error("InvalidIdentityToken", "the token is not valid");
            }
            calls.fetch_add(1, Ordering::Relaxed);
            respond(
                StatusCode::OK,
                "text/xml",
                format!(
                    "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey><SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
                    issued.access_key,
                    issued.secret_key,
                    issued.session_token,
                    rfc3339(chrono_now() + 3600)
                ),
            )
        }
        Kind::Container { authorization } => {
            let got = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if authorization.is_some() && got != *authorization {
                refused.fetch_add(1, Ordering::Relaxed);
                return respond(
                    StatusCode::UNAUTHORIZED,
                    "application/json",
                    "{\"code\":\"AccessDenied\",\"message\":\"wrong authorization token\"}".into(),
                );
            }
            calls.fetch_add(1, Ordering::Relaxed);
            respond(
                StatusCode::OK,
                "application/json",
                format!(
                    "{{\"AccessKeyId\":\"{}\",\"SecretAccessKey\":\"{}\",\"Token\":\"{}\",\"Expiration\":\"{}\"}}",
                    issued.access_key,
                    issued.secret_key,
                    issued.session_token,
                    rfc3339(chrono_now() + 3600)
                ),
            )
        }
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_and_decoding() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_098_560), "2026-12-01T04:16:00Z");
        assert_eq!(super::decode("a%2Fb+c"), "a/b c");
    }
}
