//! The node's TLS certificate: a fresh P-256 key at each start (it never
//! leaves memory), self-signed, carrying the node key and the node key's
//! signature over the certificate's public key (docs/signing.md). The node
//! key itself stays in the identity module, which makes that signature.

use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeronode_deployment::{tls_binding_message, TLS_BINDING_OID};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("identity signature: {0}")]
    Sign(String),
}

/// The certificate's key: made apart from the rest, so a start can make
/// it while it still waits for identity (~15 ms under TCG).
pub fn new_key() -> Result<KeyPair, TlsError> {
    Ok(KeyPair::generate()?)
}

/// Builds the server config for `key` (from [`new_key`]); `sign` is the
/// identity module's Sign.
pub async fn server_config<F, Fut>(
    key: KeyPair,
    node_key: &[u8; 32],
    sign: F,
) -> Result<rustls::ServerConfig, TlsError>
where
    F: FnOnce(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, String>>,
{
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let sig = sign(tls_binding_message(&spki))
        .await
        .map_err(TlsError::Sign)?;
    if sig.len() != 64 {
        return Err(TlsError::Sign(format!("{} bytes, not 64", sig.len())));
    }
    // OCTET STRING (96 bytes): node key || signature.
    let mut content = vec![0x04, 96];
    content.extend_from_slice(node_key);
    content.extend_from_slice(&sig);
    let mut params = CertificateParams::new(vec!["zeronode".to_string()])?;
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(TLS_BINDING_OID, content));
    let cert = params.self_signed(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    Ok(cfg)
}
