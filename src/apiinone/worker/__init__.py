"""Workers: lease tasks from the database queue, run providers, store images, finish tasks."""
