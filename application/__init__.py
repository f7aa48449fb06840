"""The command side: commands, messages and the BatchService. Knows the domain;
knows no Redis, Kafka or SQL."""
