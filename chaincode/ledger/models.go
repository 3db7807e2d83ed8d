package ledger

// Model is one registered version of a model and the hash of its snapshot.
type Model struct {
	ModelID      string `json:"model_id"`
	Version      int64  `json:"version"`
	SHA256       string `json:"sha256"`
	TxID         string `json:"tx_id"`
	RegisteredAt string `json:"registered_at"`
	Submitter    string `json:"submitter"`
}

// RegisterModel records the hash of a model snapshot. Versions go up by one
// (the first is 1), and only the operator account that registered a model's
// latest version registers the next, so nobody can take a future version of
// someone else's model. Registering a version again with the same hash is a
// no-op; a different hash is a conflict, since a version never changes.
func (l *Ledger) RegisterModel(modelID string, version int64, sha256 string) (Model, error) {
	if err := l.require(RoleOperator, "registering a model"); err != nil {
		return Model{}, err
	}
	if err := checkRecordID("model_id", modelID); err != nil {
		return Model{}, err
	}
	if err := checkPositive("version", version); err != nil {
		return Model{}, err
	}
	if err := checkSHA256Hex("sha256", sha256); err != nil {
		return Model{}, err
	}
	var existing Model
	found, err := l.load(ModelKey(modelID, version), &existing)
	if err != nil {
		return Model{}, err
	}
	if found {
		if existing.SHA256 == sha256 {
			return existing, nil
		}
		return Model{}, fail(CodeConflict, "sha256", "model %q version %d is registered with sha256 %s", modelID, version, existing.SHA256)
	}
	var latest int64
	if _, err := l.load(latestModelKey(modelID), &latest); err != nil {
		return Model{}, err
	}
	if version != latest+1 {
		return Model{}, fail(CodeConflict, "version", "the next version of model %q is %d, got %d", modelID, latest+1, version)
	}
	if latest > 0 {
		var prev Model
		if _, err := l.load(ModelKey(modelID, latest), &prev); err != nil {
			return Model{}, err
		}
		if prev.Submitter != l.caller.Account {
			return Model{}, fail(CodeForbidden, "model_id", "model %q is registered by %q (version %d); caller is %q", modelID, prev.Submitter, latest, l.caller.Account)
		}
	}
	m := Model{ModelID: modelID, Version: version, SHA256: sha256, TxID: l.txID, RegisteredAt: l.timestamp(), Submitter: l.caller.Account}
	if err := l.store(ModelKey(modelID, version), m); err != nil {
		return Model{}, err
	}
	if err := l.store(latestModelKey(modelID), version); err != nil {
		return Model{}, err
	}
	return m, l.emit(EventModelRegistered, m)
}

// GetModel reads one version of a model; version 0 means the highest registered.
func (l *Ledger) GetModel(modelID string, version int64) (Model, error) {
	if err := l.requireAnyRole("reading a model"); err != nil {
		return Model{}, err
	}
	if err := checkRecordID("model_id", modelID); err != nil {
		return Model{}, err
	}
	if err := checkNonNegative("version", version); err != nil {
		return Model{}, err
	}
	if version == 0 {
		found, err := l.load(latestModelKey(modelID), &version)
		if err != nil {
			return Model{}, err
		}
		if !found {
			return Model{}, fail(CodeNotFound, "model_id", "no model %q is registered", modelID)
		}
	}
	var m Model
	found, err := l.load(ModelKey(modelID, version), &m)
	if err != nil {
		return Model{}, err
	}
	if !found {
		return Model{}, fail(CodeNotFound, "version", "model %q has no version %d", modelID, version)
	}
	return m, nil
}
