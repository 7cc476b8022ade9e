"""Operating the gateway: structured logs and the audit trail, metrics, the local control API."""
