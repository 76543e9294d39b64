"""The chaos run's knobs, from the environment (make chaos sets them)."""
import os

# length of each steady phase (s): before the first fault and after each one
STEADY_S = float(os.environ.get("CHAOS_SECONDS", "15"))
# client threads of the workload; each alternates between the two instances
THREADS = int(os.environ.get("CHAOS_THREADS", "4"))
# where the summary table is written as well as printed
REPORT = os.environ.get("CHAOS_REPORT", "")
# 1: the known findings (KNOWN_FINDINGS) fail the run too
STRICT = os.environ.get("CHAOS_STRICT", "") == "1"
# 1: also the stalled log reader fault (coredb hangs on it today)
LOG_STALL = os.environ.get("CHAOS_LOG_STALL", "") == "1"
