"""A local, offline BrowserGym MiniWoB++ HTTP server. Stands alone: never imports bgwork."""

__version__ = "0.1.0"
# The HTTP API's own version, served as OpenAPI info.version: OpenEnv's runtime profile openenv-http/1.x.
API_VERSION = "1.0.0"
