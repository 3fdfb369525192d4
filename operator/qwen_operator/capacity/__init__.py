"""The replica performance model (pure): prefill, decode, KV memory, cold start and requests/s
within a TTFT SLO. Used alike by the planner, the autoscaler, the router's weights and the simulator,
so every figure the operator acts on comes from one model (see :mod:`.model`)."""
