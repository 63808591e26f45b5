"""The wire: CBOR messages in length-prefixed frames (see docs/protocol.md)."""
