"""``python -m cli`` is the ``setpay`` command (how the supervisor spawns its children)."""

from cli.main import main

raise SystemExit(main())
