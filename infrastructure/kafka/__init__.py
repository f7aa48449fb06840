"""Kafka: client construction, inbound decoding, dead letters, the local broker."""
