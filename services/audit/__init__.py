"""The audit API: record -> canonical hash -> Merkle proof -> on-chain root -> tx and block;
model provenance; account statements. Read-only. See `app.py` for the data path."""
