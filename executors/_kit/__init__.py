"""Plumbing shared by the executors: Go-compatible JSON decoding and error texts, dialing, TLS
information, the HTTP/1.1 client, GJSON, OAuth, timing and resource limits. Nothing here is a check type."""
