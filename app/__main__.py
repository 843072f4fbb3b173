"""``python -m vadapt.app``: the same as ``vadapt demo``."""

from .main import main

raise SystemExit(main())
