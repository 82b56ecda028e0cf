"""Scaling from lag: collection (I/O), health, time lag, policy and the simulator (pure)."""
