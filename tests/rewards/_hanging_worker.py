"""A stand-in for the math worker that starts, then never answers (for the timeout test)."""

import sys
import time

sys.stdout.write('{"ready": true}\n')
sys.stdout.flush()
for _line in sys.stdin:
    time.sleep(3600)
