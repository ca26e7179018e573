//! docs/signing.md's worked example is checked here: the keys, document,
//! canonical bytes, hash and signature written there are what this crate
//! computes. `cargo test -p zeronode-deployment --test example -- --ignored
//! --nocapture print` prints them afresh.

use ed25519_dalek::SigningKey;
use serde_json::Value;
use zeronode_deployment::{canonical_bytes, canonical_hash, decode, hex, sign_value, Deployment};

const SEED_HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

fn unsigned() -> Value {
    let key = SigningKey::from_bytes(&hex::decode_array(SEED_HEX).unwrap());
    let twin = hex::encode(key.verifying_key().as_bytes());
    serde_json::json!({
        "kind": "deployment",
        "id": "web-1",
        "version": 1,
        "twin": twin,
        "description": "a network and a volume",
        "expiration": 1893456000,
        "signature_requirement": {"requests": [{"twin": twin, "weight": 1, "required": true}], "threshold": 1},
        "workloads": [
            {"name": "net", "type": "network", "version": 1, "data": {"subnet": "10.20.0.0/24"}},
            {"name": "data", "type": "volume", "version": 1, "data": {"size": 104857600}}
        ]
    })
}

struct Example {
    public_key: String,
    canonical: String,
    hash: String,
    signature: String,
    signed: Value,
}

fn compute() -> Example {
    let key = SigningKey::from_bytes(&hex::decode_array(SEED_HEX).unwrap());
    let mut doc = unsigned();
    sign_value(&mut doc, &key).unwrap();
    let canonical = String::from_utf8(canonical_bytes(&doc).unwrap()).unwrap();
    let hash = hex::encode(&canonical_hash(&doc).unwrap());
    let signature = doc["signatures"][0]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    Example {
        public_key: hex::encode(key.verifying_key().as_bytes()),
        canonical,
        hash,
        signature,
        signed: doc,
    }
}

/// The value written after `label` on its own line in the doc (`label: value`),
/// or the first fenced block after a line equal to `label`.
fn doc_field(doc: &str, label: &str) -> String {
    let mut lines = doc.lines();
    while let Some(l) = lines.next() {
        if let Some(v) = l.strip_prefix(&format!("- {label}: `")) {
            return v.trim_end_matches('`').to_string();
        }
        if l.trim() == label {
            let mut block = Vec::new();
            let mut inside = false;
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    if inside {
                        return block.join("\n");
                    }
                    inside = true;
                    continue;
                }
                if inside {
                    block.push(l);
                }
            }
        }
    }
    panic!("docs/signing.md has no {label:?}");
}

#[test]
fn signing_doc_example_is_true() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/signing.md"
    ))
    .unwrap();
    let ex = compute();
    assert_eq!(doc_field(&doc, "seed"), SEED_HEX);
    assert_eq!(doc_field(&doc, "public key"), ex.public_key);
    assert_eq!(doc_field(&doc, "Canonical bytes:"), ex.canonical);
    assert_eq!(doc_field(&doc, "hash"), ex.hash);
    assert_eq!(doc_field(&doc, "signature"), ex.signature);
    // The signed document in the doc decodes, and its signature checks.
    let signed = doc_field(&doc, "Signed document:");
    let parsed = decode::<Deployment>(signed.as_bytes()).unwrap();
    assert_eq!(hex::encode(&parsed.hash), ex.hash);
    assert_eq!(parsed.value, ex.signed);
    zeronode_deployment::check_signatures(
        &parsed.hash,
        &parsed.doc.signatures,
        &parsed.doc.signature_requirement,
    )
    .unwrap();
}

#[test]
#[ignore]
fn print() {
    let ex = compute();
    println!("public key {}", ex.public_key);
    println!("canonical\n{}", ex.canonical);
    println!("hash {}", ex.hash);
    println!("signature {}", ex.signature);
    println!(
        "signed\n{}",
        serde_json::to_string_pretty(&ex.signed).unwrap()
    );
}
