"""The worker as a process whose wall clock is off, for the clock-skew tests (the system clock is untouched).

PEEKAPING_TEST_CLOCK_OFFSET (seconds, may be negative) is added to `time.time()` and `time.time_ns()`
before the worker is imported, so every wall-clock reading in the worker and its libraries is shifted;
the monotonic clock is not (a host's clock can be wrong; its uptime cannot). PEEKAPING_TEST_RECOVER_INTERVAL
makes the recoverer run more often than every 10 s. Arguments are the worker's own.
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    offset = float(os.environ.get("PEEKAPING_TEST_CLOCK_OFFSET", "0"))
    wall, wall_ns = time.time, time.time_ns
    time.time = lambda: wall() + offset
    time.time_ns = lambda: wall_ns() + int(offset * 1e9)
    sys.path.insert(0, ROOT)
    import worker

    interval = os.environ.get("PEEKAPING_TEST_RECOVER_INTERVAL")
    if interval:
        worker.Server.RECOVER_INTERVAL = float(interval)
    return worker.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
