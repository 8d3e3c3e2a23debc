"""A local, offline BrowserGym MiniWoB++ HTTP server. Stands alone: never imports bgwork."""

__version__ = "0.1.0"
