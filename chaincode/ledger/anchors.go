package ledger

// Anchor commits the Merkle root of a batch of records to the ledger.
type Anchor struct {
	BatchID     string `json:"batch_id"`
	MerkleRoot  string `json:"merkle_root"`
	Count       int64  `json:"count"`
	FirstOffset int64  `json:"first_offset"`
	LastOffset  int64  `json:"last_offset"`
	TxID        string `json:"tx_id"`
	AnchoredAt  string `json:"anchored_at"`
	Submitter   string `json:"submitter"`
}

// AnchorBatch records a batch root. Batch ids are deterministic upstream, so
// anchoring the same batch again with the same content returns the existing
// anchor (a replay after a crash), while different content is a conflict.
func (l *Ledger) AnchorBatch(batchID, merkleRoot string, count, firstOffset, lastOffset int64) (Anchor, error) {
	if err := l.require(RoleOperator, "anchoring a batch"); err != nil {
		return Anchor{}, err
	}
	if err := checkRecordID("batch_id", batchID); err != nil {
		return Anchor{}, err
	}
	if err := checkSHA256Hex("merkle_root", merkleRoot); err != nil {
		return Anchor{}, err
	}
	if err := checkPositive("count", count); err != nil {
		return Anchor{}, err
	}
	if err := checkNonNegative("first_offset", firstOffset); err != nil {
		return Anchor{}, err
	}
	if lastOffset < firstOffset {
		return Anchor{}, fail(CodeInvalidArgument, "last_offset", "must be >= first_offset %d, got %d", firstOffset, lastOffset)
	}
	var existing Anchor
	found, err := l.load(AnchorKey(batchID), &existing)
	if err != nil {
		return Anchor{}, err
	}
	if found {
		if existing.MerkleRoot == merkleRoot && existing.Count == count &&
			existing.FirstOffset == firstOffset && existing.LastOffset == lastOffset {
			return existing, nil
		}
		return Anchor{}, fail(CodeConflict, "batch_id", "batch %q is already anchored with root %s in tx %s", batchID, existing.MerkleRoot, existing.TxID)
	}
	a := Anchor{
		BatchID: batchID, MerkleRoot: merkleRoot, Count: count,
		FirstOffset: firstOffset, LastOffset: lastOffset,
		TxID: l.txID, AnchoredAt: l.timestamp(), Submitter: l.caller.Account,
	}
	if err := l.store(AnchorKey(batchID), a); err != nil {
		return Anchor{}, err
	}
	return a, l.emit(EventBatchAnchored, a)
}

// GetAnchor reads an anchored batch.
func (l *Ledger) GetAnchor(batchID string) (Anchor, error) {
	if err := l.requireAnyRole("reading an anchor"); err != nil {
		return Anchor{}, err
	}
	if err := checkRecordID("batch_id", batchID); err != nil {
		return Anchor{}, err
	}
	var a Anchor
	found, err := l.load(AnchorKey(batchID), &a)
	if err != nil {
		return Anchor{}, err
	}
	if !found {
		return Anchor{}, fail(CodeNotFound, "batch_id", "no anchor for batch %q", batchID)
	}
	return a, nil
}
