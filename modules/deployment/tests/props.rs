//! Fuzzing the decoder and verifier with proptest: arbitrary bytes, and
//! mutations of a valid signed document, never panic; a mutated document
//! whose canonical bytes changed never verifies.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use zeronode_deployment::{
    check_signatures, decode, hex, sign_value, DeleteOrder, Deployment, Grant,
};

fn signed() -> Vec<u8> {
    let k = SigningKey::from_bytes(&[7; 32]);
    let t = hex::encode(k.verifying_key().as_bytes());
    let mut v = serde_json::json!({
        "kind": "deployment", "id": "p", "version": 3, "twin": t, "expiration": 4102444800u64,
        "signature_requirement": {"requests": [{"twin": t, "weight": 1}], "threshold": 1},
        "workloads": [{"name": "n", "type": "network", "version": 1, "data": {"subnet": "10.0.0.0/24"}},
                      {"name": "v", "type": "volume", "version": 1, "data": {"size": 2097152}}]
    });
    sign_value(&mut v, &k).unwrap();
    serde_json::to_vec(&v).unwrap()
}

fn check(bytes: &[u8]) -> bool {
    let _ = decode::<Grant>(bytes);
    let _ = decode::<DeleteOrder>(bytes);
    match decode::<Deployment>(bytes) {
        Ok(p) => check_signatures(&p.hash, &p.doc.signatures, &p.doc.signature_requirement).is_ok(),
        Err(_) => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(!check(&bytes));
    }

    #[test]
    fn mutated_documents_never_panic(pos in 0usize..2000, byte in any::<u8>(), cut in 0usize..2000) {
        let good = signed();
        prop_assert!(check(&good));
        let mut m = good.clone();
        let p = pos % m.len();
        m[p] = byte;
        let verified = check(&m);
        // If it still verifies, the canonical document is unchanged
        // (e.g. whitespace or an escape that reads the same).
        if verified {
            let a = decode::<Deployment>(&m).unwrap();
            let b = decode::<Deployment>(&good).unwrap();
            prop_assert_eq!(a.hash, b.hash);
        }
        let c = cut % good.len();
        prop_assert!(!check(&good[..c]));
    }

    #[test]
    fn json_shaped_garbage_never_panics(s in "[\\[\\]{}\":,0-9a-z.eE+\\- ]{0,200}") {
        let _ = check(s.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// ECMAScript number text reads back as the same double, and is what
    /// serde_json writes for integers below 2^53.
    #[test]
    fn jcs_numbers_round_trip(bits in any::<u64>(), int in 0u64..(1 << 53)) {
        let f = f64::from_bits(bits);
        if f.is_finite() {
            let s = zeronode_deployment::jcs::format_number(f).unwrap();
            prop_assert_eq!(s.parse::<f64>().unwrap(), if f == 0.0 { 0.0 } else { f });
        }
        prop_assert_eq!(zeronode_deployment::jcs::format_number(int as f64).unwrap(), int.to_string());
    }

    /// Canonical bytes are a fixed point: parsing and canonicalizing them
    /// again gives the same bytes.
    #[test]
    fn jcs_is_idempotent(keys in proptest::collection::vec("[a-zA-Z\u{80}-\u{10ffff}]{0,4}", 0..6),
                         nums in proptest::collection::vec(any::<f64>(), 0..6),
                         s in "\\PC{0,20}") {
        let mut m = serde_json::Map::new();
        for (i, k) in keys.iter().enumerate() {
            let v = match nums.get(i).copied().filter(|f| f.is_finite()) {
                Some(f) => serde_json::json!(f),
                None => serde_json::json!([s.clone(), null, true]),
            };
            m.insert(k.clone(), v);
        }
        let v = serde_json::Value::Object(m);
        let a = zeronode_deployment::jcs::canonicalize(&v).unwrap();
        let back = zeronode_deployment::strict::parse(&a).unwrap();
        let b = zeronode_deployment::jcs::canonicalize(&back).unwrap();
        prop_assert_eq!(a, b);
    }
}
