"""Pure rendering of what the operator owns: consumer properties, ConfigMap, Deployment."""
