"""Methods built on the network and the MGRIT core (check, and the training methods)."""
