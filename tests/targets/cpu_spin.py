"""Target for injection tests: pure-Python CPU loops that make no system calls.

    python cpu_spin.py alone     the main thread spins; there is no other thread
    python cpu_spin.py sleeper   the main thread spins; a helper thread sleeps in time.sleep
    python cpu_spin.py joiner    a worker thread spins; the main thread waits in join()
    python cpu_spin.py getcwd    the main thread spins and calls os.getcwd() now and then: it
                                 releases the GIL often but never blocks in a waiting syscall
    python cpu_spin.py reexec    like `alone`, but SIGUSR1 makes it exec itself afresh, so its
                                 libraries move (ASLR) while its PID stays

Prints one line `ready {"pid": ..., "main": [...]}` and then only burns CPU.
"""

import json
import os
import signal
import sys
import threading
import time


def spin() -> None:
    count = 0
    while True:
        count += 1


def spin_and_getcwd() -> None:
    # getcwd, not stat: LTO builds (Debian's 3.14) inline PyEval_SaveThread into os.stat.
    while True:
        sum(i * i for i in range(2000))
        os.getcwd()


def main(shape: str) -> None:
    if shape == "reexec":
        argv = [sys.executable, __file__, shape]
        signal.signal(signal.SIGUSR1, lambda *_: os.execv(sys.executable, argv))
    if shape == "sleeper":
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
    info = {"pid": os.getpid(), "main": sorted(globals())}
    print("ready", json.dumps(info), flush=True)
    if shape == "joiner":
        worker = threading.Thread(target=spin)
        worker.start()
        worker.join()
    elif shape == "getcwd":
        spin_and_getcwd()
    else:
        spin()


if __name__ == "__main__":
    main(sys.argv[1])
