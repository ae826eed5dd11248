"""``python -m tideflow.codegen``: rewrite (or with ``--check``, check) :mod:`tideflow.api`."""

from tideflow.codegen import main

raise SystemExit(main())
