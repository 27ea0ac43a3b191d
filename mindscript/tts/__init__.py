"""Text-to-speech providers: one Protocol (``base``), one module per vendor, and a deterministic fake."""
