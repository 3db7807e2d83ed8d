"""Paid inference for a client of the ledger: `tritonclient.grpc` underneath, unchanged.

    from streamledger.client import PaidInferenceClient

    client = PaidInferenceClient("localhost:8001", msp_dir=".../users/User1@org2.streamledger.local/msp",
                                 msp_id="Org2MSP", server_ca="server-ca.pem")
    client.freeze(provider=PROVIDER, amount=1_000, price_per_unit=1)   # or client.use_hold(hold_id)
    result = client.infer("phishing-logreg", inputs)                   # tritonclient's InferResult
    client.receipt                                                     # a receipt for every row received

`paid.py` is the client, `receipts.py` the receipts it signs.
"""

from streamledger.client.paid import PaidInferenceClient
from streamledger.client.receipts import SIGN_EVERY_UNITS, ReceiptBook

__all__ = ["SIGN_EVERY_UNITS", "PaidInferenceClient", "ReceiptBook"]
