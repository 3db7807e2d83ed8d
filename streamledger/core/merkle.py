"""SHA-256 Merkle trees with RFC 6962 domain separation, and inclusion proofs.

A leaf hashes as H(0x00 || data) and an inner node as H(0x01 || left || right),
so no inner node can pose as a leaf (the second-preimage attack on plain Merkle
trees). A tree of n leaves splits at the largest power of two below n, exactly
as RFC 6962 section 2.1 defines, so roots and proofs interoperate with
Certificate Transparency tooling.

    >>> tree = MerkleTree([b"a", b"b", b"c"])
    >>> proof = tree.proof(2)
    >>> verify_proof(b"c", 2, tree.size, proof, tree.root)
    True
    >>> verify_proof(b"x", 2, tree.size, proof, tree.root)
    False
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class InvalidProof(ValueError):
    """A proof that cannot lead to any root for the given index and size."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class MerkleTree:
    """An immutable tree over a sequence of leaves (bytes), e.g. content hashes.

    Building keeps every level, so `proof(index)` costs O(log n). Pairing the
    nodes of each level left to right and carrying an unpaired last node up
    unchanged gives the same tree as RFC 6962's power-of-two split.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        for i, leaf in enumerate(leaves):
            if not isinstance(leaf, (bytes, bytearray, memoryview)):
                raise TypeError(f"leaf {i} must be bytes, got {type(leaf).__name__}")
        level = [leaf_hash(bytes(leaf)) for leaf in leaves]
        self._levels: list[list[bytes]] = [level]
        while len(level) > 1:
            nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            self._levels.append(nxt)
            level = nxt

    @property
    def size(self) -> int:
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        # RFC 6962: the hash of an empty tree is the hash of the empty string.
        if self.size == 0:
            return hashlib.sha256(b"").digest()
        return self._levels[-1][0]

    def proof(self, index: int) -> list[bytes]:
        """The audit path of leaf `index`: sibling hashes from the leaf up to the root."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} is out of range for a tree of {self.size} leaves")
        path = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            # The last node of an odd level has no sibling: it moves up as is.
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return path


def leaves_text(leaves: Sequence[bytes]) -> str:
    """`HASH_SIZE`-byte leaves as one string, each one's hex in order: how a batch's whole tree is
    stored (one document per batch), so that no proof needs to store its siblings."""
    for i, leaf in enumerate(leaves):
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf {i} is {len(leaf)} bytes, not {HASH_SIZE}")
    return "".join(bytes(leaf).hex() for leaf in leaves)


def tree_from_text(text: str) -> MerkleTree:
    """The tree over the leaves `leaves_text` wrote; `ValueError` naming what is wrong if `text` is not
    `HASH_SIZE`-byte hashes in hex."""
    width = 2 * HASH_SIZE
    if not isinstance(text, str):
        raise ValueError(f"leaves must be a string of hex, got {type(text).__name__}")
    if len(text) % width:
        raise ValueError(f"leaves are {len(text)} hex digits, not a multiple of {width}")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError("leaves are not hex") from None
    return MerkleTree([raw[i:i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE)])


def compute_root(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` yields for `leaf` at `index` in a tree of `size` leaves.

    Follows RFC 9162 section 2.1.3.2; raises InvalidProof when the proof's
    shape does not fit the index and size (too short, too long, bad hash size).
    """
    if not isinstance(leaf, (bytes, bytearray, memoryview)):
        raise TypeError(f"leaf must be bytes, got {type(leaf).__name__}")
    if isinstance(index, bool) or isinstance(size, bool) or not isinstance(index, int) or not isinstance(size, int):
        raise InvalidProof("index and size must be integers")
    if not 0 <= index < size:
        raise InvalidProof(f"index {index} is out of range for a tree of {size} leaves")
    fn, sn = index, size - 1
    r = leaf_hash(bytes(leaf))
    for depth, sibling in enumerate(proof):
        if not isinstance(sibling, (bytes, bytearray)) or len(sibling) != HASH_SIZE:
            raise InvalidProof(f"proof[{depth}] is not a {HASH_SIZE}-byte hash")
        if sn == 0:
            raise InvalidProof(f"proof is longer than a tree of {size} leaves allows ({len(proof)} hashes)")
        if fn & 1 or fn == sn:
            r = node_hash(bytes(sibling), r)
            # Skip the levels where this node had no sibling and moved up as is.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, bytes(sibling))
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof(f"proof is shorter than a tree of {size} leaves needs ({len(proof)} hashes)")
    return r


def verify_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True when `proof` shows `leaf` at `index` in the tree of `size` leaves with `root`."""
    try:
        computed = compute_root(leaf, index, size, proof)
    except InvalidProof:
        return False
    return isinstance(root, (bytes, bytearray)) and hmac.compare_digest(computed, bytes(root))
