//! Property tests: decoding and proof checking never panic, whatever the
//! bytes; what decodes re-encodes to the same bytes; honest proofs verify.

use proptest::prelude::*;
use zeronode_ledger::entry::{self, Entry, EntryMeta, Kind, SigChain};
use zeronode_ledger::verifier::{self, MemoryTree, SignedTreeHead};

fn hashes(n: u64) -> Vec<[u8; 32]> {
    (0..n)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect()
}

fn any_entry() -> impl Strategy<Value = Entry> {
    (
        any::<u64>(),
        any::<u64>(),
        0usize..6,
        any::<[u8; 32]>(),
        ".{0,20}",
        any::<u64>(),
        ".{0,20}",
        proptest::collection::vec(".{0,10}", 0..4),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 64..=64),
        // Version 2 with a signature chain, or version 1.
        proptest::option::of((any::<u64>(), any::<[u8; 32]>())),
    )
        .prop_map(
            |(seq, time_ms, k, prev, dep, version, owner, workloads, payload, sig, chain)| Entry {
                seq,
                time_ms,
                kind: Kind::ALL[k],
                prev,
                sig_chain: chain.map(|(upto, hash)| SigChain { upto, hash }),
                meta: EntryMeta {
                    deployment: dep,
                    version,
                    owner,
                    workloads,
                },
                payload,
                signature: sig.try_into().unwrap(),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Entry::decode(&bytes);
        let _ = entry::decode_header(&bytes);
        let _ = verifier::verify_record(&[7; 32], &bytes);
    }

    #[test]
    fn entries_round_trip_and_mutations_never_panic(
        e in any_entry(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = e.encode().unwrap();
        prop_assert_eq!(&Entry::decode(&bytes).unwrap(), &e);
        let mut m = bytes.clone();
        let i = at.index(m.len());
        m[i] ^= xor;
        // Whatever decodes is canonical: it encodes back to the same bytes.
        if let Ok(d) = Entry::decode(&m) {
            prop_assert_eq!(d.encode().unwrap(), m);
        }
        let _ = Entry::decode(&bytes[..cut.index(bytes.len())]);
    }

    #[test]
    fn proof_checks_never_panic_on_garbage(
        leaf in any::<[u8; 32]>(),
        root in any::<[u8; 32]>(),
        other in any::<[u8; 32]>(),
        index in any::<u64>(),
        size in any::<u64>(),
        proof in proptest::collection::vec(any::<[u8; 32]>(), 0..70),
        sig in proptest::collection::vec(any::<u8>(), 64..=64),
    ) {
        let _ = verifier::verify_inclusion(&leaf, index, size, &proof, &root);
        let _ = verifier::verify_inclusion(&leaf, index % 64, size % 64, &proof, &root);
        let _ = verifier::verify_consistency(index, size, &root, &other, &proof);
        let _ = verifier::verify_consistency(index % 64, size % 64, &root, &other, &proof);
        let sth = SignedTreeHead { size, time_ms: index, root, signature: sig.try_into().unwrap() };
        let _ = sth.verify(&leaf);
    }

    #[test]
    fn honest_proofs_verify_and_tampered_ones_fail(
        size in 1u64..300,
        seq_pick in any::<prop::sample::Index>(),
        old_pick in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let hs = hashes(size);
        let mut t = MemoryTree::new();
        hs.iter().for_each(|h| t.push(h));
        let root = t.root();
        let seq = seq_pick.index(size as usize) as u64;
        let proof = verifier::inclusion_path(&t, seq, size).unwrap();
        prop_assert!(verifier::verify_inclusion(&hs[seq as usize], seq, size, &proof, &root).is_ok());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let i = flip.index(bad.len());
            bad[i][0] ^= 1;
            prop_assert!(verifier::verify_inclusion(&hs[seq as usize], seq, size, &bad, &root).is_err());
        }
        let old = old_pick.index(size as usize + 1) as u64;
        let cproof = verifier::consistency_path(&t, old, size).unwrap();
        prop_assert!(verifier::verify_consistency(old, size, &t.root_at(old), &root, &cproof).is_ok());
        if !cproof.is_empty() {
            let mut bad = cproof.clone();
            let i = flip.index(bad.len());
            bad[i][31] ^= 0x80;
            prop_assert!(verifier::verify_consistency(old, size, &t.root_at(old), &root, &bad).is_err());
        }
    }

    #[test]
    fn export_checks_never_panic_on_garbage(mut bytes in proptest::collection::vec(any::<u8>(), 0..400), magic in any::<bool>()) {
        if magic && bytes.len() >= 10 {
            bytes[..8].copy_from_slice(b"ZNLEDGER");
            bytes[8] = 1;
            bytes[9] = 1;
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, &bytes).unwrap();
        prop_assert!(zeronode_ledger::export::check_export(&f).is_err() || bytes.len() >= 82);
    }
}
