"""HTTP connectors: the ``http`` source and sink, the ``http_enrich`` step, ``webhook`` input.

``httpx`` (the ``http`` extra) is imported only when a component opens.
"""
