//! TLS material for the data plane (QUIC, and TCP when the client asks for it): a certificate from files, or a self-signed one for
//! local trials; with a cluster CA, client certificates that mark members (mutual TLS).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// ALPN protocol of the shardcache data plane over QUIC.
pub const ALPN: &[u8] = b"shardcache/1";

#[derive(Debug, thiserror::Error)]
#[error("tls: {reason}")]
pub struct TlsError {
    reason: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl TlsError {
    /// The same error, keeping what caused it.
    fn because(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> TlsError {
        self.source = Some(Box::new(cause));
        self
    }
}

fn tls_err(reason: impl Into<String>) -> TlsError {
    TlsError {
        reason: reason.into(),
        source: None,
    }
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Load PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| {
                tls_err(format!("cannot read certificate {}: {e}", cert.display())).because(e)
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                tls_err(format!("bad certificate in {}: {e}", cert.display())).because(e)
            })?;
        if chain.is_empty() {
            return Err(tls_err(format!("no certificate in {}", cert.display())));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            tls_err(format!("cannot read private key {}: {e}", key.display())).because(e)
        })?;
        Ok(Identity { chain, key })
    }

    /// A fresh self-signed certificate for `localhost` and the loopback addresses. For local
    /// trials only: clients must skip verification to accept it.
    pub fn self_signed() -> Result<Identity, TlsError> {
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let certified = rcgen::generate_simple_self_signed(names).map_err(|e| {
            tls_err(format!("cannot generate a self-signed certificate: {e}")).because(e)
        })?;
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        Ok(Identity {
            chain: vec![certified.cert.der().clone()],
            key: key.into(),
        })
    }
}

/// Certificates of a PEM CA file.
pub fn load_ca(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| tls_err(format!("cannot read CA file {}: {e}", ca.display())).because(e))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| tls_err(format!("bad CA file {}: {e}", ca.display())).because(e))?;
        roots.add(cert).map_err(|e| {
            tls_err(format!("bad CA certificate in {}: {e}", ca.display())).because(e)
        })?;
    }
    if roots.is_empty() {
        return Err(tls_err(format!(
            "no certificate in CA file {}",
            ca.display()
        )));
    }
    Ok(roots)
}

/// The TLS server configuration of the data plane (QUIC, and TCP when a client starts with a
/// TLS handshake) for an identity. With `client_ca`, clients may present a certificate: one
/// signed by that CA marks the connection as a cluster member's (any other is refused in the
/// handshake); clients without one still connect, as ordinary readers.
pub fn server_tls(
    id: Identity,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(e.to_string()).because(e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(load_ca(ca)?),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| tls_err(format!("client verifier: {e}")).because(e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut tls = builder
        .with_single_cert(id.chain, id.key)
        .map_err(|e| tls_err(format!("certificate and key do not fit together: {e}")).because(e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

/// The QUIC server configuration for an identity (see [`server_tls`]).
pub fn quic_server_config(
    id: Identity,
    client_ca: Option<&Path>,
) -> Result<quinn::ServerConfig, TlsError> {
    quic_config(server_tls(id, client_ca)?, 256)
}

/// The QUIC server configuration over a TLS configuration, with at most `max_streams` requests
/// open per connection.
pub fn quic_config(
    tls: rustls::ServerConfig,
    max_streams: u32,
) -> Result<quinn::ServerConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| tls_err(e.to_string()).because(e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(super::quic::transport_config(max_streams)));
    Ok(config)
}
