"""The simulator: a NAT model, a simulated network behind the adapter interface,
scenarios, metrics and the run loop."""
