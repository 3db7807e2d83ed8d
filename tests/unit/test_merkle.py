"""Merkle trees and inclusion proofs (streamledger/core/merkle.py), checked against
the RFC 6962 definitions and the Certificate Transparency test vectors."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamledger.core.merkle import (
    InvalidProof,
    MerkleTree,
    compute_root,
    leaf_hash,
    node_hash,
    verify_proof,
)

# Leaves and tree heads published with RFC 6962's reference implementation
# (certificate-transparency merkle_tree_test.cc); roots for the first 1..8 leaves.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


# --- RFC 6962 section 2.1, written as the RFC states it (slow, recursive) ----


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = _split(len(leaves))
    return hashlib.sha256(b"\x01" + ref_root(leaves[:k]) + ref_root(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_root(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_root(leaves[:k])]


def directions(m: int, n: int) -> list[str]:
    """Which side each sibling of leaf m sits on, leaf first: the shape of its proof."""
    if n <= 1:
        return []
    k = _split(n)
    return directions(m, k) + ["R"] if m < k else directions(m - k, n - k) + ["L"]


def make_leaves(size: int, salt: bytes = b"") -> list[bytes]:
    # Distinct 32-byte leaves, like the content hashes the ledger service anchors.
    return [hashlib.sha256(salt + i.to_bytes(4, "big")).digest() for i in range(size)]


def flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


# --- known answers -------------------------------------------------------------


def test_ct_test_vector_roots() -> None:
    for n in range(1, len(CT_LEAVES) + 1):
        assert MerkleTree(CT_LEAVES[:n]).root.hex() == CT_ROOTS[n - 1], f"size {n}"


def test_empty_tree_root_is_hash_of_empty_string() -> None:
    assert MerkleTree([]).root.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_every_proof_matches_the_rfc_for_small_trees() -> None:
    for size in range(1, 65):
        leaves = make_leaves(size)
        tree = MerkleTree(leaves)
        assert tree.root == ref_root(leaves), f"size {size}"
        for index in range(size):
            proof = tree.proof(index)
            assert proof == ref_path(index, leaves), f"size {size} index {index}"
            assert verify_proof(leaves[index], index, size, proof, tree.root)


# --- properties ------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=2000)
odd_sizes = st.integers(min_value=0, max_value=999).map(lambda k: 2 * k + 1)


@settings(max_examples=60, deadline=None)
@given(size=sizes, salt=st.binary(max_size=8), data=st.data())
def test_root_and_proof_match_the_rfc(size: int, salt: bytes, data: st.DataObject) -> None:
    leaves = make_leaves(size, salt)
    tree = MerkleTree(leaves)
    assert tree.size == size
    assert tree.root == ref_root(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = tree.proof(index)
    assert proof == ref_path(index, leaves)
    assert verify_proof(leaves[index], index, size, proof, tree.root)
    assert compute_root(leaves[index], index, size, proof) == tree.root


@settings(max_examples=100, deadline=None)
@given(size=st.one_of(sizes, odd_sizes), data=st.data())
def test_wrong_sibling_is_rejected(size: int, data: st.DataObject) -> None:
    leaves = make_leaves(size)
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = tree.proof(index)
    if not proof:  # a one-leaf tree has no siblings to alter
        assert size == 1
        return
    which = data.draw(st.integers(0, len(proof) - 1), label="sibling")
    bit = data.draw(st.integers(0, 255), label="bit")
    tampered = list(proof)
    tampered[which] = flip(proof[which], bit)
    assert not verify_proof(leaves[index], index, size, tampered, tree.root)
    # Dropping, adding or swapping siblings breaks it as well.
    assert not verify_proof(leaves[index], index, size, proof[:-1], tree.root)
    assert not verify_proof(leaves[index], index, size, proof + [proof[0]], tree.root)
    if len(proof) > 1 and proof[0] != proof[-1]:
        swapped = [proof[-1], *proof[1:-1], proof[0]]
        assert not verify_proof(leaves[index], index, size, swapped, tree.root)


@settings(max_examples=100, deadline=None)
@given(size=st.one_of(sizes, odd_sizes), data=st.data())
def test_wrong_leaf_or_root_is_rejected(size: int, data: st.DataObject) -> None:
    leaves = make_leaves(size)
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = tree.proof(index)
    bit = data.draw(st.integers(0, 255), label="bit")
    assert not verify_proof(flip(leaves[index], bit), index, size, proof, tree.root)
    assert not verify_proof(leaves[index], index, size, proof, flip(tree.root, bit))


@settings(max_examples=100, deadline=None)
@given(size=st.integers(2, 2000), data=st.data())
def test_wrong_index_is_rejected(size: int, data: st.DataObject) -> None:
    leaves = make_leaves(size)
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index), label="other")
    proof = tree.proof(index)
    assert not verify_proof(leaves[index], other, size, proof, tree.root)
    # Nor does the proof of one leaf prove another leaf at its own index.
    assert not verify_proof(leaves[other], other, size, proof, tree.root)
    for out_of_range in (-1, size, size + 1):
        assert not verify_proof(leaves[index], out_of_range, size, proof, tree.root)


@settings(max_examples=150, deadline=None)
@given(size=sizes, data=st.data())
def test_wrong_size_is_rejected_unless_the_path_has_the_same_shape(size: int, data: st.DataObject) -> None:
    """A proof does not commit to the tree size: within one root, a leaf whose
    path has the same shape in a bigger or smaller tree verifies there too (leaf
    0 of 3 and of 4 leaves). So the verifier must take the size from the anchor
    on the ledger, never from the proof document; every other wrong size fails."""
    leaves = make_leaves(size)
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    wrong = data.draw(st.integers(max(1, index + 1), 2100).filter(lambda n: n != size), label="wrong size")
    proof = tree.proof(index)
    same_shape = directions(index, wrong) == directions(index, size)
    assert verify_proof(leaves[index], index, wrong, proof, tree.root) == same_shape


def test_wrong_size_example_from_the_docstring() -> None:
    leaves = make_leaves(3)
    tree = MerkleTree(leaves)
    assert verify_proof(leaves[0], 0, 4, tree.proof(0), tree.root)  # same shape
    assert not verify_proof(leaves[2], 2, 4, tree.proof(2), tree.root)  # different shape


@settings(max_examples=50, deadline=None)
@given(leaves=st.lists(st.binary(max_size=40), min_size=1, max_size=40), data=st.data())
def test_arbitrary_leaves_including_duplicates(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree(leaves)
    assert tree.root == ref_root(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1), label="index")
    assert verify_proof(leaves[index], index, len(leaves), tree.proof(index), tree.root)


# --- domain separation -------------------------------------------------------------


def test_an_inner_node_cannot_pose_as_a_leaf() -> None:
    a, b, c, d = make_leaves(4)
    tree = MerkleTree([a, b, c, d])
    # Without the 0x00/0x01 prefixes, the tree over the two concatenated child
    # pairs would have the same root as the tree over the four leaves.
    left, right = leaf_hash(a) + leaf_hash(b), leaf_hash(c) + leaf_hash(d)
    assert MerkleTree([left, right]).root != tree.root
    assert node_hash(leaf_hash(a), leaf_hash(b)) != leaf_hash(left)
    assert not verify_proof(left, 0, 2, [node_hash(leaf_hash(c), leaf_hash(d))], tree.root)


# --- bad input -----------------------------------------------------------------------


def test_proof_index_out_of_range_names_the_index() -> None:
    tree = MerkleTree(make_leaves(5))
    for bad in (-1, 5, 99):
        with pytest.raises(IndexError, match=f"index {bad} is out of range for a tree of 5 leaves"):
            tree.proof(bad)
    with pytest.raises(TypeError, match="index must be an int"):
        tree.proof("0")  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        MerkleTree([]).proof(0)


def test_non_bytes_leaf_names_its_position() -> None:
    with pytest.raises(TypeError, match="leaf 1 must be bytes, got str"):
        MerkleTree([b"a", "b"])  # type: ignore[list-item]


def test_malformed_proofs_explain_why() -> None:
    leaves = make_leaves(6)
    tree = MerkleTree(leaves)
    proof = tree.proof(4)
    with pytest.raises(InvalidProof, match="shorter"):
        compute_root(leaves[4], 4, 6, proof[:-1])
    with pytest.raises(InvalidProof, match="longer"):
        compute_root(leaves[4], 4, 6, proof + [proof[0]])
    with pytest.raises(InvalidProof, match=r"proof\[1\] is not a 32-byte hash"):
        compute_root(leaves[4], 4, 6, [proof[0], proof[1][:31]])
    with pytest.raises(InvalidProof, match="out of range"):
        compute_root(leaves[4], 6, 6, proof)
    assert not verify_proof(leaves[4], 4, 6, [p.hex() for p in proof], tree.root)  # type: ignore[misc]
    assert not verify_proof(leaves[4], 4, 6, proof, tree.root.hex())  # type: ignore[arg-type]
    assert not verify_proof(leaves[4], 4, 0, proof, tree.root)
    assert not verify_proof(leaves[4], True, 6, proof, tree.root)  # type: ignore[arg-type]
