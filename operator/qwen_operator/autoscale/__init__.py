"""autoscale package."""
