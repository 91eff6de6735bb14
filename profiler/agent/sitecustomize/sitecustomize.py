# Loaded by every Python started under `async-inspect run`: PYTHONPATH points at this folder.
# It runs the bootstrap (which connects to the collector and starts the agent before the
# app's first line), removes this folder from sys.path, then imports the sitecustomize it
# shadows, if any. PYTHONPATH is left alone so that child Python processes are observed too.
# Kept to syntax any Python 3 can parse: an older interpreter started by the app must
# still import it cleanly (it then does nothing but chain).
import os
import sys


def _async_inspect_boot():
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    if sys.version_info < (3, 12):
        return
    address = os.environ.get("ASYNC_INSPECT_ADDRESS")
    bootstrap = os.environ.get("ASYNC_INSPECT_BOOTSTRAP")
    if not address or not bootstrap:
        return
    try:
        with open(bootstrap) as handle:
            source = handle.read()
        namespace = {"__name__": "_async_inspect_bootstrap"}
        exec(compile(source, bootstrap, "exec"), namespace)
        namespace["boot"](address, os.environ.get("ASYNC_INSPECT_TOKEN", ""), "run")
    except Exception:
        pass  # never break the app; the collector reports an agent that did not arrive


def _async_inspect_chain():
    import importlib

    ours = sys.modules.pop("sitecustomize")
    try:
        importlib.import_module("sitecustomize")  # the next one: ours is gone from sys.path
    except ImportError as exc:
        # None to chain to: the import system expects to find us registered.
        sys.modules["sitecustomize"] = ours
        if exc.name != "sitecustomize":
            raise
    except Exception as exc:  # what site.py itself prints for a broken sitecustomize
        if sys.flags.verbose:
            sys.excepthook(*sys.exc_info())
        else:
            sys.stderr.write(
                "Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                "%s: %s\n" % (type(exc).__name__, exc)
            )


_async_inspect_boot()
_async_inspect_chain()
del _async_inspect_boot, _async_inspect_chain
