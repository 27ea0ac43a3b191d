"""Local servers speaking vendor wire formats for the integration tests (loopback only)."""
