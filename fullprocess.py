"""Full process: find new data, test for drift, retrain, gate and redeploy; cron runs it every 10 minutes.

This file is the command line; the work is in ``riskwatch.cycle.fullprocess``.
"""

from riskwatch.cycle.fullprocess import main

if __name__ == "__main__":
    raise SystemExit(main())
