"""`python -m appliance` is the same as the `appliance` command."""

from appliance.cli import main

raise SystemExit(main())
