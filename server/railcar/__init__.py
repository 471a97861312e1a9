"""railcar: a Python web application server on gevent with zero-downtime rolling restarts."""

__version__ = "0.1.0"
