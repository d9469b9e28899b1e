"""Persistence adapters: engine, tables, repositories, the unit of work and the task queue."""
