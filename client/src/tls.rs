//! Pinning a node by its id: the node's self-signed TLS certificate holds
//! the node key and the node key's signature over the certificate's public
//! key (docs/signing.md, "The TLS binding"). No certificate authority: the
//! verifier accepts exactly the certificates the pinned node key vouched for.

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use zeronode_deployment::{tls_binding_message, TLS_BINDING_OID};

/// The node key a certificate is bound to, after checking the binding.
pub fn bound_node_key(cert_der: &[u8]) -> Result<VerifyingKey, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    let oid = x509_parser::der_parser::oid::Oid::from(TLS_BINDING_OID)
        .map_err(|_| "bad binding OID".to_string())?;
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid == oid)
        .ok_or("certificate has no node identity binding")?;
    // extnValue = OCTET STRING (0x04 0x60) of key (32) || signature (64).
    let v = ext.value;
    if v.len() != 98 || v[0] != 0x04 || v[1] != 96 {
        return Err("node identity binding is not 96 bytes".into());
    }
    let key = VerifyingKey::from_bytes(&v[2..34].try_into().map_err(|_| "key")?)
        .map_err(|_| "binding key is not an ed25519 key".to_string())?;
    let sig = ed25519_dalek::Signature::from_bytes(&v[34..98].try_into().map_err(|_| "sig")?);
    key.verify_strict(&tls_binding_message(spki), &sig)
        .map_err(|_| "node identity binding signature does not verify".to_string())?;
    Ok(key)
}

#[derive(Debug)]
pub struct NodeVerifier {
    /// None: trust on first use (only for `zn node` without --node-id).
    pinned: Option<VerifyingKey>,
    provider: Arc<CryptoProvider>,
}

impl NodeVerifier {
    pub fn new(pinned: Option<VerifyingKey>) -> Self {
        NodeVerifier {
            pinned,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = bound_node_key(end_entity).map_err(rustls::Error::General)?;
        if let Some(p) = &self.pinned {
            if p != &key {
                return Err(rustls::Error::General(format!(
                    "node is {}, not the pinned node {}",
                    zeronode_identity::NodeId::from_key(key),
                    zeronode_identity::NodeId::from_key(*p)
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub fn client_config(pinned: Option<VerifyingKey>) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeVerifier::new(pinned)))
        .with_no_client_auth())
}
