"""Example asyncio programs that async-inspect observes (run as separate processes)."""
