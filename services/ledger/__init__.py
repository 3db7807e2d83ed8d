"""Ledger service: Merkle anchoring, settlement and the audit API over Fabric."""
