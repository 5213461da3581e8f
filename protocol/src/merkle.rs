//! The RFC 9162 (Certificate Transparency 2.0, section 2.1) Merkle tree hash
//! with SHA-256, and its inclusion proofs.
//!
//! The enclave batches the nonces of verifiers who ask for fresh evidence at
//! about the same time into one tree, has the hardware sign its root, and
//! gives each verifier the audit path of its own nonce. The leaf and node
//! prefixes (0x00, 0x01) keep a node from passing as a leaf.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// Longest audit path accepted: trees of up to 2^32 leaves.
pub const MAX_PATH: usize = 32;

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH over already leaf-hashed entries; the empty tree hashes to SHA-256("").
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `index` (RFC 9162 section 2.1.3.1), or `None` when
/// `index` is not a leaf of the tree.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    let (mut lo, mut hi, mut m) = (0, leaves.len(), index);
    // Walk down from the root, remembering the sibling subtree at each level;
    // the path lists them from the leaf up.
    while hi - lo > 1 {
        let k = split(hi - lo);
        if m < k {
            path.push(root(&leaves[lo + k..hi]));
            hi = lo + k;
        } else {
            path.push(root(&leaves[lo..lo + k]));
            lo += k;
            m -= k;
        }
    }
    path.reverse();
    Some(path)
}

/// Every leaf's audit path at once, in O(n log n) hashing: what a batch of
/// `n` verifiers needs.
pub fn all_inclusion_proofs(leaves: &[Hash]) -> Vec<Vec<Hash>> {
    let mut paths = vec![Vec::new(); leaves.len()];
    fn walk(leaves: &[Hash], offset: usize, paths: &mut [Vec<Hash>]) -> Hash {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = split(leaves.len());
        let left = walk(&leaves[..k], offset, paths);
        let right = walk(&leaves[k..], offset + k, paths);
        // Deeper siblings were pushed first, so each path runs leaf-up.
        for p in &mut paths[offset..offset + k] {
            p.push(right);
        }
        for p in &mut paths[offset + k..offset + leaves.len()] {
            p.push(left);
        }
        node_hash(&left, &right)
    }
    if !leaves.is_empty() {
        walk(leaves, 0, &mut paths);
    }
    paths
}

/// The root that an audit path leads to from `leaf` at `index` of a tree of
/// `size` leaves (RFC 9162 section 2.1.3.2), or `None` when the path does
/// not fit that position.
pub fn root_from_inclusion(leaf: &Hash, index: u64, size: u64, path: &[Hash]) -> Option<Hash> {
    if index >= size || path.len() > MAX_PATH {
        return None;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return None;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    (s_n == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Certificate Transparency reference leaves and roots (RFC 6962 test
    /// data, used by every CT implementation).
    const LEAVES: [&str; 8] =
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(&hex::decode(l).unwrap())).collect()
    }

    #[test]
    fn roots_match_the_reference_vectors() {
        let l = leaves();
        for (n, want) in ROOTS.iter().enumerate() {
            assert_eq!(hex::encode(root(&l[..n])), *want, "tree of {n}");
        }
    }

    #[test]
    fn audit_path_matches_the_reference_vector() {
        let l = leaves();
        let path: Vec<String> = inclusion_proof(&l, 5).unwrap().iter().map(hex::encode).collect();
        assert_eq!(
            path,
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
    }

    #[test]
    fn every_path_leads_to_the_root_for_its_own_leaf_only() {
        for n in 1..=40usize {
            let l: Vec<Hash> = (0..n as u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
            let r = root(&l);
            let all = all_inclusion_proofs(&l);
            for i in 0..n {
                let path = inclusion_proof(&l, i).unwrap();
                assert_eq!(all[i], path, "n={n} i={i}");
                assert_eq!(root_from_inclusion(&l[i], i as u64, n as u64, &path), Some(r), "n={n} i={i}");
                // Another leaf or another position does not reach the root. (The size
                // is not bound by the root, as in RFC 9162; only inclusion matters here.)
                let other = leaf_hash(b"someone else's nonce");
                assert_ne!(root_from_inclusion(&other, i as u64, n as u64, &path), Some(r));
                if n > 1 {
                    let j = (i + 1) % n;
                    assert_ne!(root_from_inclusion(&l[i], j as u64, n as u64, &path), Some(r), "n={n} i={i}");
                }
            }
            assert_eq!(inclusion_proof(&l, n), None);
            assert_eq!(root_from_inclusion(&l[0], n as u64, n as u64, &[]), None);
        }
    }
}
