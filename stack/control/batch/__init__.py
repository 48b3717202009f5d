"""BatchAPI jobs (Cortex v0.25): submissions, the durable queue, and the controller that runs them."""
