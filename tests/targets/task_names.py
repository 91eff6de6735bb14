"""Tasks named every way asyncio allows; prints the names the app itself sees, as JSON.

Default names, a name given at creation, one set by the task itself, and a Task subclass
with its own get_name(); then two tasks made as aiohttp makes its request tasks (asyncio.Task
itself, no task factory), one keeping its default name, one renaming itself. The agent must
report each as the app sees it, and must not change any of them (CPython 3.13.0-3.13.2
rename a task to "None" once a loop has a task factory).
"""

import asyncio
import json


async def leaf() -> None:
    await asyncio.sleep(0)


async def renames_itself(name: str = "renamed") -> None:
    task = asyncio.current_task()
    assert task is not None
    task.set_name(name)
    await asyncio.sleep(0)


class OwnName(asyncio.Task):  # type: ignore[type-arg]
    def get_name(self) -> str:
        return "own-" + super().get_name()


async def main() -> None:
    tasks = [asyncio.create_task(leaf()) for _ in range(3)]
    tasks.append(asyncio.create_task(leaf(), name="given"))
    tasks.append(asyncio.get_running_loop().create_task(renames_itself()))
    tasks.append(OwnName(leaf()))
    async with asyncio.TaskGroup() as group:
        tasks.append(group.create_task(leaf()))
    tasks.append(asyncio.Task(leaf()))
    tasks.append(asyncio.Task(renames_itself("renamed-unseen")))
    await asyncio.gather(*tasks)
    print(json.dumps([task.get_name() for task in tasks]))


asyncio.run(main())
