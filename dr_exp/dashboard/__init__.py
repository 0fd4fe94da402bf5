"""Read-only views over experiment directories: the live dashboard and its JSON API.

``data`` is the one read layer (files, cached per file); ``payload`` shapes what it reads into
the JSON the page, the HTTP API and the static report share; ``server`` serves them.
"""
