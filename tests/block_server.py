"""A worker.Server whose handlers never return: the process the kill -9 tests shoot (fixture g)."""

import asyncio
import json
import sys

import redis.asyncio as aioredis

import worker


async def main(url: str) -> None:
    redis = aioredis.Redis.from_url(url, protocol=2)

    async def block(task: worker.Task) -> None:
        print(json.dumps({"event": "task_started", "task_id": task.id}), flush=True)
        await asyncio.Event().wait()

    server = worker.Server(redis, {"monitor:healthcheck": block, "monitor:ingest": block},
                           queues={"healthcheck": 5, "ingester": 10}, concurrency=128, strict_priority=False)
    print(json.dumps({"event": "ready"}), flush=True)
    await server.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
