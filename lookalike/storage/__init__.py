"""Where the original images live and how bytes come in from outside: ``store`` (a local folder
or S3 / MinIO, so every result has a URL) and ``url_fetch`` (fetching an image by URL without
becoming a proxy into the server's own network).

May import: the base modules and itself.
"""
