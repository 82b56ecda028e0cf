"""kcg-operator: runs Kafka consumer Deployments from KafkaConsumerGroup resources."""

__version__ = "0.1.0"
