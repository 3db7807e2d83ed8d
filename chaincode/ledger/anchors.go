package ledger

import (
	"regexp"
	"strconv"
	"strings"
)

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

// Topic binds a topic's anchors to one operator account: the one that
// anchored its first batch. Stored under TopicKey(topic).
type Topic struct {
	Topic   string `json:"topic"`
	Owner   string `json:"owner"`
	TxID    string `json:"tx_id"`
	BoundAt string `json:"bound_at"`
}

// kafkaTopic is what Kafka allows in a topic name.
var kafkaTopic = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// BatchID names the batch of a topic partition's records from firstOffset to
// lastOffset: "<topic>:<partition>:<first_offset>-<last_offset>", in decimal.
func BatchID(topic string, partition, firstOffset, lastOffset int64) string {
	return topic + ":" + itoa(partition) + ":" + itoa(firstOffset) + "-" + itoa(lastOffset)
}

// batchTopic reads the topic of a batch id and checks that the id is exactly
// BatchID of that topic, some partition and the offsets given.
func batchTopic(batchID string, firstOffset, lastOffset int64) (string, error) {
	bad := func() error {
		return fail(CodeInvalidArgument, "batch_id", "must be \"<topic>:<partition>:<first_offset>-<last_offset>\" for offsets %d-%d, got %q", firstOffset, lastOffset, batchID)
	}
	rest, offsets, ok := cutLast(batchID, ":")
	if !ok {
		return "", bad()
	}
	topic, partition, ok := cutLast(rest, ":")
	if !ok || !kafkaTopic.MatchString(topic) {
		return "", bad()
	}
	p, err := strconv.ParseInt(partition, 10, 32)
	if err != nil || p < 0 || BatchID(topic, p, firstOffset, lastOffset) != batchID || offsets != itoa(firstOffset)+"-"+itoa(lastOffset) {
		return "", bad()
	}
	return topic, nil
}

func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// AnchorBatch records a batch root. The batch id must name the batch's topic,
// partition and offsets (BatchID), and a topic belongs to the operator
// account that anchored on it first: no other operator can anchor a batch of
// it, so nobody can take a future batch id of someone else's stream. Batch
// ids are deterministic upstream, so anchoring the same batch again with the
// same content returns the existing anchor (a replay after a crash), while
// different content is a conflict.
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
	if count-1 > lastOffset-firstOffset {
		return Anchor{}, fail(CodeInvalidArgument, "count", "offsets %d-%d hold at most %d records, got %d", firstOffset, lastOffset, lastOffset-firstOffset+1, count)
	}
	topic, err := batchTopic(batchID, firstOffset, lastOffset)
	if err != nil {
		return Anchor{}, err
	}
	if err := l.bindTopic(topic, batchID); err != nil {
		return Anchor{}, err
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

// bindTopic admits the topic's owner, and binds a topic nobody anchored yet
// to the caller. The record is written once, so anchors of one topic only
// read it and do not conflict with each other.
func (l *Ledger) bindTopic(topic, batchID string) error {
	var t Topic
	found, err := l.load(TopicKey(topic), &t)
	if err != nil {
		return err
	}
	if found {
		if t.Owner != l.caller.Account {
			return fail(CodeForbidden, "batch_id", "topic %q of batch %q is anchored by %q only (since tx %s); caller is %q", topic, batchID, t.Owner, t.TxID, l.caller.Account)
		}
		return nil
	}
	return l.store(TopicKey(topic), Topic{Topic: topic, Owner: l.caller.Account, TxID: l.txID, BoundAt: l.timestamp()})
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

// GetTopic reads who anchors a topic.
func (l *Ledger) GetTopic(topic string) (Topic, error) {
	if err := l.requireAnyRole("reading a topic"); err != nil {
		return Topic{}, err
	}
	if !kafkaTopic.MatchString(topic) || len(topic) > 249 {
		return Topic{}, fail(CodeInvalidArgument, "topic", "must be a Kafka topic name (letters, digits, '.', '_', '-'), got %q", topic)
	}
	var t Topic
	found, err := l.load(TopicKey(topic), &t)
	if err != nil {
		return Topic{}, err
	}
	if !found {
		return Topic{}, fail(CodeNotFound, "topic", "no batch of topic %q is anchored", topic)
	}
	return t, nil
}
