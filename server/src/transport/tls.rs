//! TLS material for the QUIC data plane: a certificate from files, or a self-signed one for
//! local trials.

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
}

fn tls_err(reason: impl Into<String>) -> TlsError {
    TlsError {
        reason: reason.into(),
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
            .map_err(|e| tls_err(format!("cannot read certificate {}: {e}", cert.display())))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(format!("bad certificate in {}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(tls_err(format!("no certificate in {}", cert.display())));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| tls_err(format!("cannot read private key {}: {e}", key.display())))?;
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
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| tls_err(format!("cannot generate a self-signed certificate: {e}")))?;
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        Ok(Identity {
            chain: vec![certified.cert.der().clone()],
            key: key.into(),
        })
    }
}

/// The QUIC server configuration for an identity.
pub fn quic_server_config(id: Identity) -> Result<quinn::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(id.chain, id.key)
        .map_err(|e| tls_err(format!("certificate and key do not fit together: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| tls_err(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(super::quic::transport_config()));
    Ok(config)
}
