//! The signing rule (docs/signing.md):
//!
//! 1. take the document as a JSON object and drop its `signatures` member;
//! 2. canonical bytes = RFC 8785 JCS of what is left;
//! 3. hash = blake3(canonical bytes), 32 bytes;
//! 4. each signer signs the 32-byte hash with ed25519 (RFC 8032) and adds
//!    `{"twin": <hex public key>, "signature": <hex 64 bytes>}` to
//!    `signatures`.
//!
//! Verification is strict ed25519 (no malleable or small-order forms).

use ed25519_dalek::{Signer, SigningKey};
use serde_json::Value;

use crate::doc::{parse_key, DocError, Signature, SignatureRequirement};
use crate::hex;

/// Canonical bytes of a document: JCS of everything but `signatures`.
pub fn canonical_bytes(doc: &Value) -> Result<Vec<u8>, DocError> {
    let mut v = doc.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("signatures");
    } else {
        return Err(DocError::Malformed(
            "the document is not a JSON object".into(),
        ));
    }
    crate::jcs::canonicalize(&v).map_err(|e| DocError::Schema(e.to_string()))
}

pub fn canonical_hash(doc: &Value) -> Result<[u8; 32], DocError> {
    Ok(*blake3::hash(&canonical_bytes(doc)?).as_bytes())
}

/// Signs `doc` with `key`: adds its signature, or replaces the one that
/// key already made (signing twice is harmless).
pub fn sign_value(doc: &mut Value, key: &SigningKey) -> Result<(), DocError> {
    let hash = canonical_hash(doc)?;
    let twin = hex::encode(key.verifying_key().as_bytes());
    let sig = Signature {
        twin: twin.clone(),
        signature: hex::encode(&key.sign(&hash).to_bytes()),
    };
    let map = doc
        .as_object_mut()
        .ok_or_else(|| DocError::Malformed("the document is not a JSON object".into()))?;
    let sigs = map
        .entry("signatures")
        .or_insert_with(|| Value::Array(Vec::new()));
    let arr = sigs
        .as_array_mut()
        .ok_or_else(|| DocError::Schema("signatures is not an array".into()))?;
    arr.retain(|s| s.get("twin").and_then(Value::as_str) != Some(twin.as_str()));
    arr.push(serde_json::to_value(sig).map_err(|e| DocError::Schema(e.to_string()))?);
    Ok(())
}

pub fn verify_one(hash: &[u8; 32], sig: &Signature) -> bool {
    let Some(key) = parse_key(&sig.twin) else {
        return false;
    };
    let Some(bytes) = hex::decode_array::<64>(&sig.signature) else {
        return false;
    };
    key.verify_strict(hash, &ed25519_dalek::Signature::from_bytes(&bytes))
        .is_ok()
}

/// Every signature verifies, each signer is requested and signs once
/// (checked first, in the order listed); then every required signer has
/// signed and the weights reach the threshold. Returns the signers.
pub fn check_signatures(
    hash: &[u8; 32],
    sigs: &[Signature],
    req: &SignatureRequirement,
) -> Result<Vec<String>, DocError> {
    let mut signers: Vec<String> = Vec::with_capacity(sigs.len());
    for s in sigs {
        if signers.contains(&s.twin) {
            return Err(DocError::DuplicateSigner {
                twin: s.twin.clone(),
            });
        }
        if !verify_one(hash, s) {
            return Err(DocError::SignatureInvalid {
                twin: s.twin.clone(),
            });
        }
        if !req.requests.iter().any(|r| r.twin == s.twin) {
            return Err(DocError::UnknownSigner {
                twin: s.twin.clone(),
            });
        }
        signers.push(s.twin.clone());
    }
    check_threshold(&signers, req)?;
    Ok(signers)
}

/// The threshold step alone, over signers already verified.
pub fn check_threshold(signers: &[String], req: &SignatureRequirement) -> Result<(), DocError> {
    if let Some(r) = req
        .requests
        .iter()
        .find(|r| r.required && !signers.contains(&r.twin))
    {
        return Err(DocError::RequiredSignerMissing {
            twin: r.twin.clone(),
        });
    }
    let have: u64 = req
        .requests
        .iter()
        .filter(|r| signers.contains(&r.twin))
        .fold(0u64, |a, r| a.saturating_add(r.weight));
    if have < req.threshold {
        return Err(DocError::ThresholdNotMet {
            have,
            need: req.threshold,
        });
    }
    Ok(())
}

/// The message a signed read signs: a domain tag, the method, the path
/// (with query) and the unix time in seconds, hashed with blake3.
pub fn read_auth_hash(method: &str, path: &str, unix_secs: u64) -> [u8; 32] {
    let msg = format!("zeronode-read-v1\n{method}\n{path}\n{unix_secs}");
    *blake3::hash(msg.as_bytes()).as_bytes()
}

/// The headers of a signed read: `x-zn-twin`, `x-zn-time`, `x-zn-signature`.
pub const HEADER_TWIN: &str = "x-zn-twin";
pub const HEADER_TIME: &str = "x-zn-time";
pub const HEADER_SIGNATURE: &str = "x-zn-signature";

pub fn sign_read(
    key: &SigningKey,
    method: &str,
    path: &str,
    unix_secs: u64,
) -> [(String, String); 3] {
    let sig = key.sign(&read_auth_hash(method, path, unix_secs));
    [
        (
            HEADER_TWIN.into(),
            hex::encode(key.verifying_key().as_bytes()),
        ),
        (HEADER_TIME.into(), unix_secs.to_string()),
        (HEADER_SIGNATURE.into(), hex::encode(&sig.to_bytes())),
    ]
}

/// The message the node signs over a TLS certificate's public key
/// (SubjectPublicKeyInfo DER) to bind it to the node identity.
pub fn tls_binding_message(spki_der: &[u8]) -> Vec<u8> {
    let mut m = b"zeronode-tls-v1\n".to_vec();
    m.extend_from_slice(blake3::hash(spki_der).as_bytes());
    m
}

/// The private-arc OID of the certificate extension holding that
/// signature (64 raw bytes in an OCTET STRING).
pub const TLS_BINDING_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];

/// A receipt: the node's signed answer to an accepted order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub node_id: String,
    pub kind: String,
    pub deployment: String,
    pub version: u64,
    /// blake3 canonical hash of the order, hex.
    pub order_hash: String,
    pub seq: u64,
    /// The ledger entry's hash, hex.
    pub entry_hash: String,
    pub time_ms: u64,
    pub tree_size: u64,
    pub tree_time_ms: u64,
    pub tree_root: String,
    pub tree_signature: String,
    /// The node's signature over the canonical hash of the receipt without
    /// this member, hex.
    #[serde(default)]
    pub signature: String,
}

impl Receipt {
    pub fn signed_hash(&self) -> Result<[u8; 32], DocError> {
        let mut v = serde_json::to_value(self).map_err(|e| DocError::Schema(e.to_string()))?;
        if let Some(m) = v.as_object_mut() {
            m.remove("signature");
        }
        let bytes = crate::jcs::canonicalize(&v).map_err(|e| DocError::Schema(e.to_string()))?;
        Ok(*blake3::hash(&bytes).as_bytes())
    }

    pub fn verify(&self, node_key: &ed25519_dalek::VerifyingKey) -> bool {
        let (Ok(h), Some(sig)) = (self.signed_hash(), hex::decode_array::<64>(&self.signature))
        else {
            return false;
        };
        node_key
            .verify_strict(&h, &ed25519_dalek::Signature::from_bytes(&sig))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::SignatureRequest;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }
    fn twin(k: &SigningKey) -> String {
        hex::encode(k.verifying_key().as_bytes())
    }
    fn req(entries: &[(&SigningKey, u64, bool)], threshold: u64) -> SignatureRequirement {
        SignatureRequirement {
            requests: entries
                .iter()
                .map(|(k, w, r)| SignatureRequest {
                    twin: twin(k),
                    weight: *w,
                    required: *r,
                })
                .collect(),
            threshold,
        }
    }
    fn sigs(doc: &Value) -> Vec<Signature> {
        serde_json::from_value(doc["signatures"].clone()).unwrap()
    }

    #[test]
    fn sign_verify_and_tamper() {
        let (a, b) = (key(1), key(2));
        let mut doc = serde_json::json!({"kind": "x", "n": 1});
        sign_value(&mut doc, &a).unwrap();
        sign_value(&mut doc, &b).unwrap();
        sign_value(&mut doc, &a).unwrap();
        assert_eq!(doc["signatures"].as_array().unwrap().len(), 2);
        let h = canonical_hash(&doc).unwrap();
        let r = req(&[(&a, 1, false), (&b, 1, false)], 2);
        assert_eq!(check_signatures(&h, &sigs(&doc), &r).unwrap().len(), 2);
        // Other bytes: the same signatures no longer verify.
        let mut other = doc.clone();
        other["n"] = 2.into();
        let h2 = canonical_hash(&other).unwrap();
        assert!(matches!(
            check_signatures(&h2, &sigs(&other), &r),
            Err(DocError::SignatureInvalid { .. })
        ));
        // A signature labelled with the wrong key.
        let mut s = sigs(&doc);
        s[0].twin = twin(&key(3));
        assert!(matches!(
            check_signatures(&h, &s, &r),
            Err(DocError::SignatureInvalid { .. })
        ));
        // Duplicates.
        let s = vec![sigs(&doc)[0].clone(), sigs(&doc)[0].clone()];
        assert!(matches!(
            check_signatures(&h, &s, &r),
            Err(DocError::DuplicateSigner { .. })
        ));
    }

    #[test]
    fn threshold_and_required() {
        let (a, b, c) = (key(1), key(2), key(3));
        let mut doc = serde_json::json!({"kind": "x"});
        sign_value(&mut doc, &a).unwrap();
        let h = canonical_hash(&doc).unwrap();
        let only_a = sigs(&doc);
        // weight 1 of 2
        assert_eq!(
            check_signatures(&h, &only_a, &req(&[(&a, 1, false), (&b, 1, false)], 2)),
            Err(DocError::ThresholdNotMet { have: 1, need: 2 })
        );
        // weight 2 alone reaches 2
        assert!(check_signatures(&h, &only_a, &req(&[(&a, 2, false), (&b, 1, false)], 2)).is_ok());
        // b required
        assert_eq!(
            check_signatures(&h, &only_a, &req(&[(&a, 5, false), (&b, 1, true)], 1)),
            Err(DocError::RequiredSignerMissing { twin: twin(&b) })
        );
        // c not requested
        let mut doc2 = doc.clone();
        sign_value(&mut doc2, &c).unwrap();
        assert_eq!(
            check_signatures(&h, &sigs(&doc2), &req(&[(&a, 1, false)], 1)),
            Err(DocError::UnknownSigner { twin: twin(&c) })
        );
        // no signatures at all
        assert!(matches!(
            check_signatures(&h, &[], &req(&[(&a, 1, false)], 1)),
            Err(DocError::ThresholdNotMet { have: 0, need: 1 })
        ));
    }

    #[test]
    fn receipts_verify_only_unchanged() {
        let k = key(9);
        let mut r = Receipt {
            node_id: "n".into(),
            kind: "deploy".into(),
            deployment: "d".into(),
            version: 1,
            order_hash: "00".into(),
            seq: 3,
            entry_hash: "11".into(),
            time_ms: 5,
            tree_size: 4,
            tree_time_ms: 6,
            tree_root: "22".into(),
            tree_signature: "33".into(),
            signature: String::new(),
        };
        r.signature = hex::encode(&k.sign(&r.signed_hash().unwrap()).to_bytes());
        assert!(r.verify(&k.verifying_key()));
        r.seq = 4;
        assert!(!r.verify(&k.verifying_key()));
    }
}
