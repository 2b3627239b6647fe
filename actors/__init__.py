"""The SET parties as asyncio actors, and the runtime they share."""
