//! Batch verification of ed25519 signatures that all come from one key.
//!
//! A signature (R, s) on message M under key A is valid when
//! `[s]B = R + [k]A` with `k = SHA-512(R || A || M) mod l`. A batch checks
//! one random linear combination of all those equations:
//!
//! `[-Σ z_i s_i]B + Σ [z_i]R_i + [Σ z_i k_i]A = 0`
//!
//! with 128-bit `z_i` derived from all the inputs (so they cannot be
//! chosen to cancel a bad signature). This is the equation ed25519-dalek's
//! `verify_batch` checks, except that with one key the `A` terms fold into
//! a single point: the multiscalar multiplication has n + 2 points instead
//! of 2n + 1. Like dalek's batch it is cofactorless; it also refuses
//! non-canonical `s` and small-order `R` or `A` as strict verification does.
//! A failing batch says only that some signature is bad; the caller then
//! checks one by one to name it.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};

/// True when every `(message, signature)` verifies under `public_key`
/// (overwhelmingly likely: a false accept needs a 2^-128 coincidence, or a
/// crafted small-torsion `R`, as with any cofactorless batch).
pub fn verify_same_key(public_key: &[u8; 32], items: &[(&[u8], &[u8; 64])]) -> bool {
    if items.is_empty() {
        return true;
    }
    let Some(a) = CompressedEdwardsY(*public_key).decompress() else {
        return false;
    };
    if a.is_small_order() {
        return false;
    }
    let mut rs: Vec<EdwardsPoint> = Vec::with_capacity(items.len() + 2);
    let mut ss: Vec<Scalar> = Vec::with_capacity(items.len());
    let mut ks: Vec<Scalar> = Vec::with_capacity(items.len());
    // The z_i come from a hash of everything checked.
    let mut transcript = blake3::Hasher::new_derive_key("zeronode-ledger batch verify v1");
    transcript.update(public_key);
    for (msg, sig) in items {
        let mut r_bytes = [0u8; 32];
        r_bytes.copy_from_slice(&sig[..32]);
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(&sig[32..]);
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        let Some(r) = CompressedEdwardsY(r_bytes).decompress() else {
            return false;
        };
        if r.is_small_order() {
            return false;
        }
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(public_key);
        h.update(msg);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        transcript.update(sig.as_slice());
        transcript.update(&(msg.len() as u64).to_le_bytes());
        transcript.update(msg);
        rs.push(r);
        ss.push(s);
        ks.push(k);
    }
    let mut xof = transcript.finalize_xof();
    let mut b_coeff = Scalar::ZERO;
    let mut a_coeff = Scalar::ZERO;
    let mut zs: Vec<Scalar> = Vec::with_capacity(items.len() + 2);
    for (s, k) in ss.iter().zip(&ks) {
        let mut z = [0u8; 16];
        xof.fill(&mut z);
        let z = Scalar::from(u128::from_le_bytes(z));
        b_coeff -= z * s;
        a_coeff += z * k;
        zs.push(z);
    }
    zs.push(b_coeff);
    rs.push(ED25519_BASEPOINT_POINT);
    zs.push(a_coeff);
    rs.push(a);
    EdwardsPoint::vartime_multiscalar_mul(zs.iter(), rs.iter()).is_identity()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn batch(n: usize) -> (SigningKey, Vec<[u8; 32]>, Vec<[u8; 64]>) {
        let key = SigningKey::from_bytes(&[9; 32]);
        let msgs: Vec<[u8; 32]> = (0..n as u32)
            .map(|i| *blake3::hash(&i.to_be_bytes()).as_bytes())
            .collect();
        let sigs = msgs.iter().map(|m| key.sign(m).to_bytes()).collect();
        (key, msgs, sigs)
    }

    fn check(pk: &[u8; 32], msgs: &[[u8; 32]], sigs: &[[u8; 64]]) -> bool {
        let items: Vec<(&[u8], &[u8; 64])> = msgs.iter().map(|m| &m[..]).zip(sigs.iter()).collect();
        verify_same_key(pk, &items)
    }

    #[test]
    fn valid_batches_pass() {
        for n in [1, 2, 7, 64, 300] {
            let (key, msgs, sigs) = batch(n);
            assert!(
                check(&key.verifying_key().to_bytes(), &msgs, &sigs),
                "n={n}"
            );
        }
    }

    #[test]
    fn any_flipped_bit_fails() {
        let (key, msgs, sigs) = batch(20);
        let pk = key.verifying_key().to_bytes();
        for i in [0usize, 7, 19] {
            for bit in (0..512).step_by(5) {
                let mut bad = sigs.clone();
                bad[i][bit / 8] ^= 1 << (bit % 8);
                assert!(!check(&pk, &msgs, &bad), "sig {i} bit {bit}");
            }
            let mut bad_msgs = msgs.clone();
            bad_msgs[i][3] ^= 0x10;
            assert!(!check(&pk, &bad_msgs, &sigs));
        }
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes();
        assert!(!check(&other, &msgs, &sigs));
        // Swapped signatures are each valid for another message: still caught.
        let mut swapped = sigs.clone();
        swapped.swap(3, 4);
        assert!(!check(&pk, &msgs, &swapped));
    }

    #[test]
    fn non_canonical_s_and_small_order_points_are_refused() {
        let (key, msgs, mut sigs) = batch(3);
        let pk = key.verifying_key().to_bytes();
        // s + l is the same scalar, non-canonical: strict verification refuses it.
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for j in 0..32 {
            let v = sigs[1][32 + j] as u16 + l[j] as u16 + carry;
            sigs[1][32 + j] = v as u8;
            carry = v >> 8;
        }
        assert!(!check(&pk, &msgs, &sigs));
        // The identity as a public key.
        let mut id = [0u8; 32];
        id[0] = 1;
        assert!(!check(&id, &msgs, &batch(3).2));
    }
}
