"""``python -m examples.cat_clinic``: see :mod:`examples.cat_clinic.cli`."""

from .cli import main

raise SystemExit(main())
