"""Write the client-activity files the project ships, or a later batch, deterministically (seeded).

This file is the command line; the work is in ``riskwatch.data.generator``.
"""

from riskwatch.data.generator import main

if __name__ == "__main__":
    raise SystemExit(main())
