"""Where delivered renders go. One Protocol (``Storage``); local is the default backend."""

from mindscript.storage.base import Storage, StoredObject, render_key

__all__ = ["Storage", "StoredObject", "render_key"]
