"""The node agent (``qwenctl node-agent``): pre-stages model versions into a GPU node's cache.

A DaemonSet pod per GPU node (no GPU requested) keeps the node's hostPath model cache
holding the current and target versions of every QwenDeployment that could run there,
evicts what no resource needs (``modelsync.evict``), and publishes what the node holds
as the Node annotation ``serving.qwenops.io/model-cache``, which the operator counts
into ``status.model.staging`` and waits on before a roll. :mod:`.plan` decides (pure),
:mod:`.agent` does the I/O.
"""
