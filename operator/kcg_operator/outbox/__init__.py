"""The transactional-outbox relay (`kcg relay`): PostgreSQL outbox table to Kafka."""
