"""A single-threaded target that never makes a system call: no safe point comes by itself."""

print("ready", flush=True)
n = 0
while True:
    n = (n * 31 + 7) % 1000003
