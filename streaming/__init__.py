"""Incremental (streaming) versions of the offline SpiRit-LM stages: no sockets, no asyncio."""
