"""The pipeline's entry points: one module per DVC stage, and the two user commands (predict, report).
The library they run is transfer/."""
import os
import signal
import sys

# `python -m stages.<name>` imports this package first, then seconds of torch & co. before the stage's
# own handling (transfer.core.stage.run_main) is in place: Ctrl-C or SIGTERM then is one line, not a traceback.
if sys.argv[:1] == ["-m"]:
    def _interrupted_while_starting(signum, frame):
        argv = getattr(sys, "orig_argv", [])
        name = argv[argv.index("-m") + 1].rsplit(".", 1)[-1] if "-m" in argv[:-1] else "stages"
        print(f"{name}: interrupted while starting; nothing was written", file=sys.stderr, flush=True)
        os._exit(130)

    signal.signal(signal.SIGTERM, _interrupted_while_starting)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background job (nohup, &) ignores Ctrl-C
        signal.signal(signal.SIGINT, _interrupted_while_starting)
