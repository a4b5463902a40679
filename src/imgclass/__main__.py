import os
import sys

from .cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun, leave without running C++ static destructors: gloo's threads could still be
    # joinable then and abort the process ("terminate called without an active exception"), which
    # was seen in about 1 of 8 two-process runs here. Everything is written and flushed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
