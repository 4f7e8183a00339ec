"""The NATS channel-level search: presets and decoding (the super-net lives here too)."""
