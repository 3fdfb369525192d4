"""The data plane: the inference router the operator deploys in front of each QwenDeployment.

Why it exists: a Kubernetes Service spreads requests uniformly over pods, blind to GPU type,
queue and KV cache, which on mixed GPU pools breaks the latency SLO far below the capacity
the planner bought. :mod:`.picking` holds the one routing algorithm (pure: the real router
process and the simulator both use it); the HTTP proxy, endpoint discovery and the
``qwenctl router`` command are the I/O around it.
"""
