"""Packaging: the Helm chart's generated files, the install bundle and the Helm CLI build.

Nothing here runs in the operator; it keeps ``charts/``, ``manifests/install.yaml``
and the tools that check them in step with the API models.
"""
