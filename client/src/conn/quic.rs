//! QUIC connections: one bidirectional stream per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use shardcache_proto::frame::{MAX_RESPONSE_PAYLOAD, encode};
use shardcache_proto::{Frame, FrameCodec, Framed};
use tokio::io::AsyncReadExt;

use crate::error::{ClientError, Result};
use crate::options::ClientOptions;

/// ALPN protocol of the shardcache data plane over QUIC.
const ALPN: &[u8] = b"shardcache/1";

fn tls_err(reason: impl Into<String>) -> ClientError {
    ClientError::tls(reason)
}

/// A TLS error made from `cause`: its message, and `cause` as the source.
fn tls_cause<E: std::error::Error + Send + Sync + 'static>(e: E) -> ClientError {
    ClientError::tls(e.to_string()).caused_by(e)
}

/// A TLS error made from `cause`: "CONTEXT: CAUSE", and `cause` as the source.
fn tls_context<E: std::error::Error + Send + Sync + 'static>(
    context: impl std::fmt::Display,
) -> impl FnOnce(E) -> ClientError {
    move |e| ClientError::tls(format!("{context}: {e}")).caused_by(e)
}

/// The TLS client configuration of the options' trust settings (QUIC and `tls://` TCP).
pub fn client_tls(options: &ClientOptions) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_cause)?;
    let builder = if options.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &options.tls_ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(tls_context(format!("cannot read CA file {}", ca.display())))?;
            for cert in certs {
                let cert = cert.map_err(tls_context(format!("bad CA file {}", ca.display())))?;
                roots.add(cert).map_err(tls_context("bad CA certificate"))?;
            }
        }
        if roots.is_empty() {
            return Err(tls_err(
                "TLS needs a CA to trust the server (tls_ca) or insecure_skip_verify for a dev server",
            ));
        }
        if options.tls_any_name {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(tls_cause)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SignedByCa(inner)))
        } else {
            builder.with_root_certificates(roots)
        }
    };
    let mut tls = match (&options.tls_client_cert, &options.tls_client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(tls_context(format!(
                    "cannot read certificate {}",
                    cert.display()
                )))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(tls_context(format!(
                    "bad certificate in {}",
                    cert.display()
                )))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).map_err(tls_context(
                format!("cannot read private key {}", key.display()),
            ))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(tls_context("client certificate and key"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(tls_err(
                "tls_client_cert and tls_client_key must be given together",
            ));
        }
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

/// A client endpoint configured from the options' trust settings.
pub fn quic_endpoint(options: &ClientOptions, remote: SocketAddr) -> Result<quinn::Endpoint> {
    let tls = client_tls(options)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(tls_cause)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    let bind: SocketAddr = if remote.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("valid bind address");
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(tls_context("cannot open a UDP socket"))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(0u32.into())
        .stream_receive_window((16u32 << 20).into())
        .receive_window((256u32 << 20).into())
        .send_window(1 << 20)
        .max_idle_timeout(Some(
            Duration::from_secs(30)
                .try_into()
                .expect("valid idle timeout"),
        ))
        .keep_alive_interval(Some(Duration::from_secs(10)));
    t
}

pub struct QuicConn {
    endpoint_name: String,
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl QuicConn {
    pub async fn connect(
        options: &ClientOptions,
        address: &str,
        host: &str,
        endpoint_name: &str,
    ) -> Result<QuicConn> {
        let connect_err = |reason: String| ClientError::connect(endpoint_name, reason);
        fn cause<E: std::error::Error + Send + Sync + 'static>(
            endpoint_name: &str,
        ) -> impl FnOnce(E) -> ClientError {
            move |e| ClientError::connect(endpoint_name, e.to_string()).caused_by(e)
        }
        let remote = tokio::net::lookup_host(address)
            .await
            .map_err(cause(endpoint_name))?
            .next()
            .ok_or_else(|| connect_err("address resolved to nothing".into()))?;
        let endpoint = quic_endpoint(options, remote)?;
        let server_name = options.server_name.as_deref().unwrap_or(host);
        let conn = endpoint
            .connect(remote, server_name)
            .map_err(cause(endpoint_name))?
            .await
            .map_err(cause(endpoint_name))?;
        Ok(QuicConn {
            endpoint_name: endpoint_name.to_string(),
            conn,
            _endpoint: endpoint,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint_name
    }

    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    pub async fn request(&self, frame: Frame) -> Result<QuicResponses> {
        fn lost<E: std::error::Error + Send + Sync + 'static>(
            endpoint: &str,
        ) -> impl FnOnce(E) -> ClientError {
            move |e| ClientError::lost(endpoint, e.to_string()).caused_by(e)
        }
        let name = &self.endpoint_name;
        let (mut send, recv) = self.conn.open_bi().await.map_err(lost(name))?;
        let bytes = encode(&Framed {
            request_id: 1,
            frame,
        })
        .to_vec();
        send.write_all(&bytes).await.map_err(lost(name))?;
        send.finish().map_err(lost(name))?;
        Ok(QuicResponses {
            recv,
            codec: FrameCodec::new(MAX_RESPONSE_PAYLOAD),
            endpoint: self.endpoint_name.clone(),
        })
    }
}

pub struct QuicResponses {
    recv: quinn::RecvStream,
    codec: FrameCodec,
    endpoint: String,
}

impl QuicResponses {
    pub async fn next(&mut self) -> Result<Frame> {
        loop {
            match self.codec.next_frame() {
                Ok(Some(framed)) => return Ok(framed.frame),
                Ok(None) => {}
                Err(e) => {
                    return Err(ClientError::protocol(&self.endpoint, e.to_string()).caused_by(e));
                }
            }
            match self.recv.read_buf(self.codec.buffer_mut()).await {
                Ok(0) => {
                    return Err(ClientError::lost(
                        &self.endpoint,
                        "stream ended before the response was complete",
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(ClientError::lost(&self.endpoint, e.to_string()).caused_by(e));
                }
            }
        }
    }
}

/// Accepts a server certificate that chains to the configured CA whatever names it carries:
/// for members of one cluster, where being signed by the cluster's CA is the identity and
/// addresses come and go.
#[derive(Debug)]
struct SignedByCa(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for SignedByCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any server certificate: only for `insecure_skip_verify`, against a server started with
/// `--insecure-dev-tls`. Signatures are still checked, so the handshake itself is sound.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
