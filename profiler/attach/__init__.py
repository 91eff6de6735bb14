"""Runs on the host: find a CPython process, check it, and make it run a bootstrap snippet.

```python
from profiler.attach import inspect_process, inject_with_gdb

target = inspect_process(pid)            # TargetInfo, or an AttachError subclass
method = inject_with_gdb(target, code)   # `code` ran once inside the target, at a safe point
```
"""

from profiler.attach.gdb import inject_with_gdb
from profiler.attach.process import PtraceAccess, TargetInfo, check_ptrace, inspect_process

__all__ = ["PtraceAccess", "TargetInfo", "check_ptrace", "inject_with_gdb", "inspect_process"]
