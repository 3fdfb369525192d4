"""Layer-diff model sync: a private registry (S3 or OCI) and the node-local pull agent.

``chunking`` and ``manifest`` are pure (bytes in, chunks and diffs out); ``backend`` is
the registry interface and ``open_registry`` (by URL scheme); ``registry`` speaks S3
through boto3 and ``oci`` the OCI distribution API (Harbor, Zot, distribution); ``push``
publishes a directory; ``store`` and ``pull`` keep the node cache that TGI reads through
``models/NAME/versions/<id>`` (or ``current``), ``evict`` sheds its old versions by policy;
``cli`` is ``qwenctl model``; ``s3server`` and ``ociserver``
build and run the real servers the tests and benches use.
"""
