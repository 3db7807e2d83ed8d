"""Code that more than one StreamLedger service uses: settings, logging, metrics."""
