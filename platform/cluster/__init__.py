"""Past one machine: the block stream on NATS JetStream, gateways as separate processes,
a standby sequencer (see ``role`` for the roles, ``stream`` for the stream's format)."""
