"""Layer-diff model sync: a private registry on S3 and the node-local pull agent.

``chunking`` and ``manifest`` are pure (bytes in, chunks and diffs out); ``registry``
speaks S3 through boto3; ``push`` publishes a directory; ``store`` and ``pull`` keep the
node cache that TGI reads through ``models/NAME/current``; ``cli`` is ``qwenctl model``.
"""
