"""Packaging: the Helm chart's generated files, the install bundle and the Helm CLI build.

It keeps ``charts/``, ``manifests/install.yaml`` and the tools that check them in step
with the API models. The operator uses one piece at run time: it validates its config file
with :class:`.values.OperatorConfig`, the schema of the chart's ``config`` values.
"""
