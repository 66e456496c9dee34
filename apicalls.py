"""API calls: ask every endpoint of the running API and write the answers to one file.

This file is the command line; the work is in ``riskwatch.stages.apicalls``.
"""

from riskwatch.stages.apicalls import main

if __name__ == "__main__":
    raise SystemExit(main())
