"""`python -m setpay` is the `setpay` command."""

from setpay.cli import main

raise SystemExit(main())
