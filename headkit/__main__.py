"""`python -m headkit ...` runs the headkit command."""

from headkit.cli import main

raise SystemExit(main())
