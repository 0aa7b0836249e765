import os
import sys

try:
    from executor.main import main   # everything after this import reports in one line
    rc = main()
except KeyboardInterrupt:            # Ctrl-C while Python was still importing
    rc = 130
sys.stdout.flush()
sys.stderr.flush()
# Skip C++ static destructors: after tensor-parallel (DTensor) runs on gloo, about 1 exit in 10
# aborts in them ("terminate called without an active exception", no Python frame), after
# all work is done and the process group is destroyed. Nothing is left to clean up here.
os._exit(rc)
