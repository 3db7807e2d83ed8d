package ledger

// Account holds spendable credit; credit frozen in holds is not in Balance.
type Account struct {
	ID      string `json:"id"`
	Balance int64  `json:"balance"`
}

// TransferResult shows both sides after a transfer.
type TransferResult struct {
	From   Account `json:"from"`
	To     Account `json:"to"`
	Amount int64   `json:"amount"`
}

func (l *Ledger) account(id string) (Account, bool, error) {
	var a Account
	found, err := l.load(AccountKey(id), &a)
	if !found {
		a = Account{ID: id}
	}
	return a, found, err
}

func (l *Ledger) credit(field, id string, amount int64) (Account, error) {
	a, _, err := l.account(id)
	if err != nil {
		return Account{}, err
	}
	if a.Balance, err = addChecked(field, a.Balance, amount); err != nil {
		return Account{}, err
	}
	return a, l.store(AccountKey(id), a)
}

func (l *Ledger) debit(field, id string, amount int64) (Account, error) {
	a, _, err := l.account(id)
	if err != nil {
		return Account{}, err
	}
	if a.Balance < amount {
		return Account{}, fail(CodeInsufficientFunds, field, "account %q has %d, needs %d", id, a.Balance, amount)
	}
	a.Balance -= amount
	return a, l.store(AccountKey(id), a)
}

// Mint creates credit; only an admin of the policy's mint organisation may.
func (l *Ledger) Mint(account string, amount int64) (Account, error) {
	if !l.caller.IsAdmin {
		return Account{}, fail(CodeForbidden, "creator", "only an admin of %s may mint; %q is not an admin", l.settings.MintMSPID, l.caller.Account)
	}
	if l.caller.MSPID != l.settings.MintMSPID {
		return Account{}, fail(CodeForbidden, "creator", "only an admin of %s may mint; %q is an admin of %s", l.settings.MintMSPID, l.caller.Account, l.caller.MSPID)
	}
	if err := checkAccountID("account", account); err != nil {
		return Account{}, err
	}
	if err := checkPositive("amount", amount); err != nil {
		return Account{}, err
	}
	return l.credit("amount", account, amount)
}

// Transfer moves credit from the caller's own account to another.
func (l *Ledger) Transfer(to string, amount int64) (TransferResult, error) {
	if err := l.require(RoleClient, "transferring credit"); err != nil {
		return TransferResult{}, err
	}
	if err := checkAccountID("to", to); err != nil {
		return TransferResult{}, err
	}
	if to == l.caller.Account {
		return TransferResult{}, fail(CodeInvalidArgument, "to", "must differ from the sender %q", to)
	}
	if err := checkPositive("amount", amount); err != nil {
		return TransferResult{}, err
	}
	from, err := l.debit("amount", l.caller.Account, amount)
	if err != nil {
		return TransferResult{}, err
	}
	dest, err := l.credit("amount", to, amount)
	if err != nil {
		return TransferResult{}, err
	}
	return TransferResult{From: from, To: dest, Amount: amount}, nil
}

// Balance reports an account to its owner, a provider acting for it or an
// auditor; an account that never held credit is unknown.
func (l *Ledger) Balance(account string) (Account, error) {
	if err := checkAccountID("account", account); err != nil {
		return Account{}, err
	}
	if err := l.requireReaderOf("account", account); err != nil {
		return Account{}, err
	}
	a, found, err := l.account(account)
	if err != nil {
		return Account{}, err
	}
	if !found {
		return Account{}, fail(CodeNotFound, "account", "no account %q on the ledger", account)
	}
	return a, nil
}

// WhoAmI tells any caller which account id and roles the contract sees for it.
func (l *Ledger) WhoAmI() Caller { return l.caller }
