"""The render queue: a Supabase (Postgres) table turned into jobs.

``base`` holds the ``QueueJob`` value type and the ``JobQueue`` protocol; transports: ``postgres`` (psycopg
pool), ``supabase`` (REST rpc), ``memory`` (the in-memory twin). ``mindscript.services.build_queue`` picks one.
"""

from mindscript.queue.base import STATUSES, JobQueue, QueueJob, Status

__all__ = ["STATUSES", "JobQueue", "QueueJob", "Status"]
