"""Training: config, spatial sets, patches, losses, and the Ray Train loop."""
