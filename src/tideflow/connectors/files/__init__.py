"""The ``file`` source and sink: CSV, NDJSON, JSON and Parquet on local disks or any fsspec URL.

Source
------
Reads a file, a folder (recursively) or a glob, in sorted path order, through fsspec, so
``s3://`` and every other fsspec protocol work like local paths. Names starting with ``.`` or
``_`` are skipped inside folders and glob matches (temporary and marker files such as the
sink's staging folder or ``_SUCCESS``). CSV, NDJSON and Parquet are streamed, whatever the file
size; a JSON array is loaded one file at a time.

Its position, stored at every checkpoint, is::

    {"done": ["<url>", ...], "file": "<url>" | null, "row": <int>}

``done`` lists finished files (never read again), ``file`` the file being read and ``row`` the
rows of it already consumed, counting dead-lettered rows, so a resume starts exactly after the
last processed row. A row is a data row for CSV (the header is not counted), a line for NDJSON,
an array element for JSON and a record for Parquet.

Sink
----
Writes into a folder, optionally Hive-partitioned (``col=value/``). Files are written through
streaming writers into a hidden staging folder inside the destination and renamed to their final
name only at ``commit``, after the checkpoint that covers them is durable. The commit token is::

    {"v": 1, "epoch": <int>, "files": {"<temp>": "<final>", ...}}

with paths relative to the destination. Final names are
``{prefix}[-{scope}]-{epoch:08d}-{seq:05d}.{ext}``: the epoch is one more than the epoch of the
last durable token (or, with no token, one more than the highest epoch already in the
destination), so a name is only ever made visible by a durable checkpoint, a crash before
durability leaves only staging files (deleted at the next start), and a crash during the commit
is finished at the next start by renaming the remaining files of the same token.
"""
