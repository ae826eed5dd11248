"""HTTP connectors: the ``http`` source and sink, the ``http_enrich`` step, ``webhook`` input.

Built on the standard library (``urllib.request``, ``http.server``): no extra to install.
"""
