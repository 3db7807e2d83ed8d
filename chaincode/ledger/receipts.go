package ledger

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
)

// Receipt is a client's signed statement that it has been served Units units
// of a hold in all (cumulative), numbered by Sequence. A receipt supersedes
// the one recorded before it when its sequence is higher and its units are
// not fewer; the provider is paid for the units of the latest.
type Receipt struct {
	HoldID     string `json:"hold_id"`
	Units      int64  `json:"units"`       // cumulative units served, >= 0
	Sequence   int64  `json:"sequence"`    // >= 1; a higher one supersedes
	Signature  string `json:"signature"`   // base64 (standard alphabet, padded) of the client's signature
	TxID       string `json:"tx_id"`       // the transaction that recorded it on the ledger
	RecordedAt string `json:"recorded_at"` // that transaction's timestamp
}

// ReceiptVersion opens every receipt's signed bytes.
const ReceiptVersion = "streamledger-receipt/v1"

// maxSignatureBytes bounds a decoded signature: DER ECDSA P-521 is at most 139 bytes.
const maxSignatureBytes = 256

// ReceiptMessage is the one encoding of a receipt that clients sign: four
// lines joined by "\n", no trailing newline, numbers in decimal without sign
// or leading zeros:
//
//	streamledger-receipt/v1
//	<hold_id>
//	<units>
//	<sequence>
//
// An ECDSA key signs the SHA-256 digest of these bytes (ASN.1 DER signature,
// low-S or high-S: the sequence, not the signature bytes, orders receipts);
// an Ed25519 key signs the bytes themselves.
func ReceiptMessage(holdID string, units, sequence int64) []byte {
	return []byte(ReceiptVersion + "\n" + holdID + "\n" + itoa(units) + "\n" + itoa(sequence))
}

// receiptKey reads the public key of a certificate (DER) that may sign receipts.
func receiptKey(der []byte) (any, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fail(CodeForbidden, "creator", "the caller's certificate does not parse: %v", err)
	}
	switch key := cert.PublicKey.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey:
		return key, nil
	default:
		return nil, fail(CodeInvalidArgument, "creator", "receipts are signed with ECDSA or Ed25519 keys; the caller's certificate has a %T", cert.PublicKey)
	}
}

// verifyReceiptSignature reports whether sig signs message with the key of certPEM.
func verifyReceiptSignature(certPEM string, message, sig []byte) (bool, error) {
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil {
		return false, &StateError{Op: "decode", Key: "client_cert", Err: errNoPEM}
	}
	key, err := receiptKey(block.Bytes)
	if err != nil {
		return false, &StateError{Op: "decode", Key: "client_cert", Err: err}
	}
	switch key := key.(type) {
	case *ecdsa.PublicKey:
		digest := sha256.Sum256(message)
		return ecdsa.VerifyASN1(key, digest[:], sig), nil
	case ed25519.PublicKey:
		return ed25519.Verify(key, message, sig), nil
	}
	return false, nil
}

var errNoPEM = errors.New("no PEM block")

// checkReceipt validates a receipt presented for hold h: its numbers, the
// client's signature, and its order against the receipt recorded. It returns
// the receipt to keep, and false when it is the recorded one again.
func (l *Ledger) checkReceipt(h Hold, units, sequence int64, signature string) (Receipt, bool, error) {
	if sequence < 1 {
		return Receipt{}, false, fail(CodeInvalidArgument, "sequence", "a receipt's sequence starts at 1, got %d", sequence)
	}
	if err := checkNonNegative("units", units); err != nil {
		return Receipt{}, false, err
	}
	if units > h.Amount/h.PricePerUnit {
		return Receipt{}, false, fail(CodeExceedsHold, "units", "hold %q pays for at most %d units (%d at %d), the receipt says %d", h.ID, h.Amount/h.PricePerUnit, h.Amount, h.PricePerUnit, units)
	}
	sig, err := base64.StdEncoding.DecodeString(signature)
	if err != nil || len(sig) == 0 || len(sig) > maxSignatureBytes {
		return Receipt{}, false, fail(CodeInvalidArgument, "signature", "must be the base64 (standard, padded) of a signature of 1 to %d bytes", maxSignatureBytes)
	}
	ok, err := verifyReceiptSignature(h.ClientCert, ReceiptMessage(h.ID, units, sequence), sig)
	if err != nil {
		return Receipt{}, false, err
	}
	if !ok {
		return Receipt{}, false, fail(CodeInvalidReceipt, "signature", "receipt (hold %s, units %d, sequence %d) is not signed by the certificate of client %q that froze the hold", h.ID, units, sequence, h.Client)
	}
	if last := h.Receipt; last != nil {
		if sequence == last.Sequence && units == last.Units {
			return *last, false, nil
		}
		if sequence <= last.Sequence {
			return Receipt{}, false, fail(CodeStaleReceipt, "sequence", "hold %q already has receipt sequence %d (units %d); a receipt must have a higher sequence", h.ID, last.Sequence, last.Units)
		}
		if units < last.Units {
			return Receipt{}, false, fail(CodeStaleReceipt, "units", "hold %q already has a receipt for %d units (sequence %d); units never decrease", h.ID, last.Units, last.Sequence)
		}
	}
	return Receipt{HoldID: h.ID, Units: units, Sequence: sequence, Signature: signature, TxID: l.txID, RecordedAt: l.timestamp()}, true, nil
}

// RecordReceipt keeps the client's latest receipt on an open hold without
// settling it (a checkpoint), so that a restarted provider, or the client's
// own Release after the window, pays what it covers. A provider acting for
// the hold's provider records it, until settle_by. The receipt already
// recorded again is a no-op that returns the hold unchanged.
func (l *Ledger) RecordReceipt(holdID string, units, sequence int64, signature string) (Hold, error) {
	h, err := l.providersHold(holdID, "recording a receipt")
	if err != nil {
		return Hold{}, err
	}
	if err := l.requireOpen(h); err != nil {
		return Hold{}, err
	}
	if err := l.requireSettleWindow(h); err != nil {
		return Hold{}, err
	}
	r, changed, err := l.checkReceipt(h, units, sequence, signature)
	if err != nil || !changed {
		return h, err
	}
	h.Receipt = &r
	if err := l.store(HoldKey(holdID), h); err != nil {
		return Hold{}, err
	}
	return h, l.emit(EventReceiptRecorded, r)
}

// requireSettleWindow refuses the provider's closing moves from settle_by on.
func (l *Ledger) requireSettleWindow(h Hold) error {
	if l.now.Unix() >= h.SettleBy {
		return fail(CodeWindowClosed, "hold_id", "hold %q could be settled until %d (expiry %d + window %d s); now the client may release it", h.ID, h.SettleBy, h.ExpiresAt, h.SettlementWindow)
	}
	return nil
}
